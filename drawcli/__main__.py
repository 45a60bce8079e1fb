from drawcli.cli import main

main()
