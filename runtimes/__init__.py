"""Inference runtimes shipped with the suite. Each registers through the entry point group
`gemma4_conformance.runtimes`, exactly as an outside engine would."""
