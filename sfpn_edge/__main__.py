from sfpn_edge.cli import main

raise SystemExit(main())
