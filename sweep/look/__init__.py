"""Looking at a study while and after it runs: `sweep status`, the HTML report, the dashboards, TensorBoard."""
