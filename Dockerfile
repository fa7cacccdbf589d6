# openshell: the gateway, the CLI and the supervisor bundle in one image.
#   docker build -t openshell .
#   docker build --build-arg BASE_IMAGE=my/debian-with-node -t openshell .   (where no registry is reachable)
# The base must be Debian-like with Node 20 (node, npm). The supervisor bundle is built from the
# build stage's own node and tools, so sandboxes run it in any image.
ARG BASE_IMAGE=node:20-bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# The bundle copies bwrap, nsenter, setpriv, setsid, ip and nft from here; npm ci may compile addons.
RUN missing=""; \
    for pair in bwrap:bubblewrap nsenter:util-linux setpriv:util-linux setsid:util-linux ip:iproute2 nft:nftables; do \
      command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $missing python3 make g++ && rm -rf /var/lib/apt/lists/*; \
    fi
COPY . .
# A context that brings node_modules (built for this platform) is used as it is; otherwise install.
RUN if [ ! -d node_modules ]; then npm ci --no-audit --no-fund; fi
RUN OPENSHELL_BUNDLE_REQUIRE_TOOLS=1 npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${BASE_IMAGE}
WORKDIR /app
COPY --from=build /src/package.json /src/package-lock.json ./
COPY --from=build /src/bin ./bin
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
RUN ln -s /app/bin/openshell.js /usr/local/bin/openshell && mkdir -p /var/lib/openshell
ENV OPENSHELL_HOST=0.0.0.0 \
    OPENSHELL_PORT=8080 \
    OPENSHELL_STATE_DIR=/var/lib/openshell \
    NODE_ENV=production
VOLUME /var/lib/openshell
EXPOSE 8080
ENTRYPOINT ["node", "/app/bin/openshell.js"]
CMD ["gateway", "start"]
