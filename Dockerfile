# syntax=docker/dockerfile:1
#
# The responder as a static, non-root container image.
#
#   docker build --build-arg VERSION=v1.2.3 -t responder:v1.2.3 .
#   docker run --rm responder:v1.2.3 version
#
# The image runs "serve"; give it a config with
#   args: ["serve", "--config", "/etc/responder/config/responder.yaml"]
# (deploy/kubernetes) or RESPONDER_* variables. Its working directory,
# /var/lib/responder, is where the default SQLite store (responder.db) goes:
# mount a volume there.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# CGO_ENABLED=0: a static binary (the SQLite driver is pure Go), runnable on
# distroless/static. -trimpath drops local paths; -s -w strips symbols; the
# .git directory is not in the build context, so no VCS stamp is attempted.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/responder-dev/responder/app.Version=${VERSION}" \
      -o /out/responder . \
 && mkdir -p /out/var/lib/responder

# distroless/static: CA certificates, tzdata, /etc/passwd with nonroot
# (65532), no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/responder /responder
COPY --from=build --chown=65532:65532 /out/var/lib/responder /var/lib/responder
WORKDIR /var/lib/responder
USER 65532:65532
# 8080: webhooks, /healthz, /readyz. 9090: /metrics and the admin API.
EXPOSE 8080 9090
ENTRYPOINT ["/responder"]
CMD ["serve"]
