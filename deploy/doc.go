// Package deploy holds the deployment and monitoring artefacts of the
// responder, none of them Go: the Grafana dashboard (grafana/), the
// Prometheus scrape config and alert rules with their promtool tests
// (prometheus/), the Kubernetes kustomize base and PostgreSQL overlay
// (kubernetes/), the compose demo stack (compose/) and the systemd unit
// (systemd/). The repository's Dockerfile builds the image they run.
//
// Its tests check them against the real program: every file parses, the
// manifests keep their security settings, the exposition of the built binary
// matches the metrics contract of SPEC section 9, and every dashboard query
// returns data from a real Prometheus scraping a real `responder serve --dev`.
// They run prometheus and promtool (Debian's prometheus package),
// systemd-analyze, and kustomize or kubectl; a test whose program is missing
// skips, or fails under .ci/run, which installs them.
package deploy
