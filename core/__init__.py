"""Types and helpers every area shares (the parsed request, the plan, the clock, the stand-in
tokenizer, prompt rendering, YAML loading, the error tree): the bottom layer, importing no other area."""
