"""The demo's stage functions, `stage(ctx: DemoContext) -> dict`, grouped by what they exercise;
`ssl_aver.app.demo.STAGES` names them in the order they run."""
