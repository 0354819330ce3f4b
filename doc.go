// Package rereadyverify is a Caddy v2 gateway for ReReady webhooks: an HTTP
// handler that verifies each delivery (an HMAC-SHA512 signature and/or a
// ?token= parameter) before it reaches the app behind it, and an app that
// keeps what the app failed and delivers it again, in order.
//
// # The shape, and where each part lives
//
// The checks themselves are Caddy-free, in internal/verify: the signature
// header parser, the HMAC and token checks and the payload scanner. The
// handler and the `caddy reready` command call the same functions, so a
// signature the command makes is one the gateway accepts.
//
// The handler, `http.handlers.reready_verify` (module.go: its type, options
// and lifecycle; caddyfile.go: the directive), runs one request through the
// steps of pipeline.go: method, declared length, body (body.go: pooled
// buffers under max_body and body_timeout), signature or token, payload,
// replay gate (replay.go, with a per-process store in replay_memory.go or a
// fleet-wide one in Caddy's storage in replay_storage.go), then
// forward.go: the request rewritten for the app (headers.go: every header
// name, the trusted X-ReReady-* headers and the {http.reready.*}
// placeholders) and passed to the rest of the route. Every reason a request can be refused for, with
// its status, is in reasons.go; delivery ids, derived from what was
// signed, in delivery.go.
//
// The `reready` app (app.go) owns what outlives a request: the delivery
// journal (journal.go: a bounded ring of every outcome, per process, kept
// across reloads, and the records of live requests and queued items
// written to it; with `history`, history.go writes it to Caddy's storage
// in batches and sweeps it past keep, history_bodies.go keeps bodies in
// packs, and history_query.go reads the ring and the storage together by
// range and by delivery) and, when a handler has `queue` on, the
// store-and-forward queue. A delivery the app failed is stored (queue.go: one item per
// delivery and one line per return in Caddy's storage, shared by every
// gateway on that storage; storage.go: the locks, retries and listings it
// needs from any certmagic.Storage) and answered 202. The worker
// (worker.go: one per running config, with its settings and backoff)
// scans the queue, probes a failing app with one delivery at a time, and
// redelivers each return's deliveries in order through the same route, in
// process (redeliver.go: the round trip, both the worker's and the
// handler's side). Pause and resume (pause.go: one
// record in the same storage, read by every scan, and by the live path at
// most once per 50 ms, which pause and resume wait out before answering)
// hold a path's deliveries in the queue until resumed. Metrics are in
// metrics.go.
//
// Three views read the journal and the queue through the same functions:
// the admin API `admin.api.reready` (admin.go: /reready/deliveries,
// /reready/queue and its retry and drop; pause.go: /reready/pause and
// /reready/resume), the deliveries page
// `http.handlers.reready_ui` (ui.go, with the embedded HTML, CSS and
// JavaScript in ui/), and the `caddy reready` command (command.go: sign,
// send and verify; command_ops.go: deliveries and queue; command_history.go:
// deliveries --since and show; command_replay.go: replay; command_pause.go:
// pause and resume; all through the admin endpoint). Both APIs go through
// the same routes (routes.go: a ServeMux).
//
// Tests sit beside the file they test; integration/ holds the in-process
// end-to-end tests (caddytest), integration/realbin the tests of a real
// Caddy binary built with xcaddy (build tag fullsuite: `go test ./...`
// alone runs the fast suites), integration/browser the page in headless
// Chromium, and bench/ the load harnesses. The README's contributor section
// draws the same picture.
package rereadyverify
