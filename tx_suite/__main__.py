"""``python -m tx_suite`` runs the ``tx-suite`` command."""

from tx_suite.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
