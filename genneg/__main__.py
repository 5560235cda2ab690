from genneg.cli import main

main()
