# Tether in a container: a static binary on a distroless base, run as a
# non-root user, with its data in the /data volume.
#
#   docker build -t tether .
#   docker run -p 1883:1883 -p 8080:8080 -v tether-data:/data \
#     -e TETHER_ADMIN_PASSWORD=change-me-please tether
#
# deploy/compose.yaml does the same with Docker Compose.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION and COMMIT stand in for the go command's VCS stamp when the
# build context has no .git (tether version shows them).
ARG VERSION=""
ARG COMMIT=""
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.buildVersion=${VERSION} -X main.buildCommit=${COMMIT}" \
      -o /out/tether ./cmd/tether \
 && mkdir -p /out/data

# nonroot: uid and gid 65532, no shell, CA certificates and tzdata only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tether /usr/local/bin/tether
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV TETHER_DATA_DIR=/data
VOLUME ["/data"]
# MQTT, HTTP (dashboard, API, MQTT over WebSocket, /metrics), MQTT over
# TLS and HTTPS (these two only with --tls-cert and --tls-key).
EXPOSE 1883 8080 8883 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["serve"]
