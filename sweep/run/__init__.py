"""Running a study: the launcher, the workers it starts, the executors that start them, and their job folders."""
