from llmhyper_feast.cli import main

main()
