"""The load generator: open model (fixed arrival rate, latency from the intended send time, HDR
histograms), a closed mode for contrast, workloads, and runs saved with their context."""
