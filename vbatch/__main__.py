from vbatch.cli import main

main()
