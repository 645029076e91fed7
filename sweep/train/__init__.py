"""The common trainer every trial and final run goes through: what a run is made of (`setup`), its epoch loop
(`loop`), and the checkpoints it writes and resumes from (`checkpoint`). This face imports nothing: the model
families load weights through `checkpoint`."""
