"""The local cluster harness, part of the product: test your pipelines against real daemons.

- cluster.py: `LocalCluster`, N daemon processes on 127.0.0.1 (kill, pause, restart).
- links.py + faults.py: a fault-injecting proxy on every link (cut, isolate, delay).
- background.py: a job running while a fault lands (`LocalCluster.run_with_fault`).
- certs.py: throwaway certificates; ports.py: free ports.
"""
