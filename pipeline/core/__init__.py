"""The stage contract and the stage graph: what a stage declares, the order, inputs and hashes derived from it, stable seeds."""
