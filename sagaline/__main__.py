from sagaline.cli import main

main()
