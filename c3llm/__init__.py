"""The c3llm application: the `c3llm` command line, training recipes, data loaders, evaluation and metrics, SynthFoley
and the demo. It imports the model (`modeling_c3llm`), the processor (`processing_c3llm`) and `conversion`; they
never import it."""
