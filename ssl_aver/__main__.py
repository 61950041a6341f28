"""`python -m ssl_aver COMMAND ...` = `ssl-aver COMMAND ...`, so that `accelerate launch -m ssl_aver
experiment ...` runs any command in every launched process (an entry point of the app layer)."""

from ssl_aver.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
