"""peerd benchmarks as a package; `python3 bench/run.py` (or `python3 -m peerd_bench` from bench/)
runs them. Layout, bottom to top (a module imports only from the ones above it in this list):

  common      constants, sizes, logging, `sh`, waiting, ports, small formatting helpers
  procs       every process and namespace started, stopped by PID / deleted by name (CLEAN)
  cpu         /proc readers: CPU-seconds and RSS per process, ResourceProbe, machine CPU
  client      a raw-socket HTTP/1.1 client, whole-blob throughput and interleaved latency runs
  images      OCI layouts written by hand (tar layers), pushed with curl, imported with ctr
  nginx, registry, containerd, peerd, netns   one module per component
  machine     the machine notes at the top of the report
  profile     perf record / perf report
  pair        the two-node set-up (A with the image in containerd, B empty) shared by the cases below
  throughput, latency, blobs, dht, cluster    one module per case family
  targets     issue 12's targets, derived from a results dict (also CPU-s/GiB per role)
  report, plots, checks                       docs/benchmarks.md, the PNGs, the --smoke number check
  bench, cli  the sections in order; arguments and output
"""
