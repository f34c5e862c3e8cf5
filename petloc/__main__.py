from petloc.cli import main

main()
