"""``python -m dsnb.doctor``: the environment check; the code is ``dsnb.plan.doctor``."""

from dsnb.plan.doctor import main

if __name__ == "__main__":
    raise SystemExit(main())
