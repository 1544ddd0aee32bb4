#!/usr/bin/env bash
# Smoke test of one built image, by reference (a tag or, in the release workflow, name@sha256:...):
#
#   deploy/smoke-test.sh IMAGE
#
# 1. the image refuses to start without the settings a deployment must bring: no token issuer
#    (the image sets AUTH_MODE=jwt) and no CURSOR_SECRET (the image sets REQUIRE_CURSOR_SECRET);
# 2. with them it migrates, serves /health and /ready, refuses a call without a token (401),
#    creates an order with a dev token (201), and reports itself healthy (Docker HEALTHCHECK).
#
# The containers run with --network host against DATABASE_URL and REDIS_URL (default: this
# machine's PostgreSQL and Redis on 127.0.0.1; the database must exist). Ports: SMOKE_PORT,
# SMOKE_GRPC_PORT, SMOKE_ADMIN_PORT (18080, 19090, 16060), kept off the service's defaults so a
# service already running on the machine is left alone. Everything it starts is removed on exit.
set -euo pipefail

image=${1:?usage: deploy/smoke-test.sh IMAGE}
database_url=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/orders_smoke}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/15}
port=${SMOKE_PORT:-18080}
grpc_port=${SMOKE_GRPC_PORT:-19090}
admin_port=${SMOKE_ADMIN_PORT:-16060}
name=orders-smoke-$$
keys=$(mktemp -d)
chmod 0777 "$keys"  # written by the image's non-root user (uid 10001)

cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run --rm -v "$keys":/keys --entrypoint /opt/venv/bin/python "$image" -c 'import pathlib, shutil; [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in pathlib.Path("/keys").iterdir()]' >/dev/null 2>&1 || true
  rm -rf "$keys"
}
trap cleanup EXIT

fail() { echo "smoke test FAILED: $*" >&2; docker logs --tail 80 "$name" 2>&1 >&2 || true; exit 1; }

# What a deployment must set, every other setting from the image.
issuer=(-e AUTH_ISSUER=orders-service-dev -e AUTH_AUDIENCE=orders-service -e AUTH_JWKS_FILE=/keys/auth/jwks.json)
cursor_secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
network=(--network host -e DATABASE_URL="$database_url" -e REDIS_URL="$redis_url"
         -e PORT="$port" -e GRPC_PORT="$grpc_port" -e PPROF_PORT="$admin_port")

echo "== $image"
docker image inspect --format 'id {{.Id}}  size {{.Size}} bytes  user {{.Config.User}}' "$image"

echo "== refuses to start without a token issuer (AUTH_MODE=jwt)"
if out=$(timeout 60 docker run --rm "${network[@]}" "$image" serve 2>&1); then
  fail "serve started without AUTH_ISSUER: $out"
fi
grep -q "AUTH_ISSUER is required" <<<"$out" || fail "unexpected refusal: $out"
echo "   $out"

echo "== dev signing key and JWKS (AUTH_MODE=none: this one-shot verifies no token)"
docker run --rm -v "$keys":/keys -e DATA_DIR=/keys -e AUTH_MODE=none "$image" dev-keys >/dev/null

echo "== refuses to start without CURSOR_SECRET"
if out=$(timeout 60 docker run --rm "${network[@]}" "${issuer[@]}" -v "$keys":/keys:ro "$image" serve 2>&1); then
  fail "serve started without CURSOR_SECRET: $out"
fi
grep -q "CURSOR_SECRET is required" <<<"$out" || fail "unexpected refusal: $out"
echo "   $out"

echo "== migrate"
timeout 120 docker run --rm "${network[@]}" "${issuer[@]}" "$image" migrate

echo "== serve"
docker run -d --name "$name" "${network[@]}" "${issuer[@]}" -e CURSOR_SECRET="$cursor_secret" \
  -e HTTP_WORKERS=1 -v "$keys":/keys:ro "$image" serve >/dev/null
base=http://127.0.0.1:$port
for _ in $(seq 1 60); do
  curl -fsS -o /dev/null "$base/health" 2>/dev/null && break
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
  sleep 1
done
curl -fsS "$base/health" || fail "/health did not answer within 60 s"
echo
for _ in $(seq 1 30); do curl -fsS -o /dev/null "$base/ready" 2>/dev/null && break; sleep 1; done
curl -fsS "$base/ready" || fail "/ready did not answer 200 within 30 s"
echo

status=$(curl -sS -o /dev/null -w '%{http_code}' "$base/orders")
[ "$status" = 401 ] || fail "GET /orders without a token answered $status, not 401"
echo "   GET /orders without a token: 401"

token=$(docker run --rm -v "$keys":/keys:ro -e DATA_DIR=/keys -e AUTH_MODE=none "$image" \
  dev-token --sub smoke --scope "orders:read orders:write")
status=$(curl -sS -o /tmp/"$name".json -w '%{http_code}' "$base/orders" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{"product": "smoke", "quantity": 1}')
cat /tmp/"$name".json; echo; rm -f /tmp/"$name".json
[ "$status" = 201 ] || fail "POST /orders answered $status, not 201"

echo "== Docker HEALTHCHECK"
for _ in $(seq 1 45); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$name")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK status: $health"
echo "   healthy"

echo "== SIGTERM: clean stop"
docker stop -t 30 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
echo "smoke test passed: $image"
