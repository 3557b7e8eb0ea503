"""``python -m lowbit.bench ...``"""
from . import main

raise SystemExit(main())
