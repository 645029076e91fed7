"""The common trainer every trial and final run goes through: what a run is made of (`setup`) and its epoch loop
(`loop`); the checkpoints it writes are read back through `sweep.checkpoint`, weights only."""
