"""From a project to what runs it in production: pools, container images, Kubernetes manifests."""
