//! Kubernetes API types (kubeovn.io/v1 CRDs, KubeVirt subset) and Kube-OVN annotation keys and parsers.
