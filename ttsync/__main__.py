from ttsync.cli import main

main()
