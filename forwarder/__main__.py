from forwarder.cli import main

main()
