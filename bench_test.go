package rereadyverify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"fmt"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Benchmarks of the whole handler (signature check, JSON parse, header
// setting, body restore; next is a no-op) beside a bare pooled HMAC-SHA512
// over the same bytes, the floor. Run with:
//
//	go test -run '^$' -bench 'Handler|BareHMAC' -benchmem .
//
// Requests are built in batches with the timer stopped, the way net/http
// and Caddy would build them (header map sized to the incoming headers, a
// fresh replacer), so only the handler's own time and allocations count.

var benchSizes = []int{256, 4 << 10, 64 << 10, 1 << 20}

// benchBody returns a vendor-shaped payload padded to n bytes.
func benchBody(n int) []byte {
	base := `{"device_return_id":"e025d043-c41d-4167-8bd3-24cc66345696","serial_number":null,"state":"pending_return_shipment","test":false,"ticket_url":null,"url":"https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696","note":"`
	pad := n - len(base) - 2
	if pad < 0 {
		pad = 0
	}
	return []byte(base + strings.Repeat("x", pad) + `"}`)
}

func BenchmarkBareHMAC(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			body := benchBody(n)
			m := hmac.New(sha512.New, []byte(testSecret))
			var out [sha512.Size]byte
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				m.Reset()
				m.Write([]byte("1744831201."))
				m.Write(body)
				m.Sum(out[:0])
			}
		})
	}
}

// nopCloser is a reusable request body.
type benchBodyReader struct{ bytes.Reader }

func (*benchBodyReader) Close() error { return nil }

type benchNext struct{}

func (benchNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	return nil
}

type benchWriter struct{ h http.Header }

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(int)             {}

// SetReadDeadline is what net/http's ResponseWriter offers to
// http.ResponseController; the handler uses it for body_timeout.
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

func BenchmarkHandler(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			benchHandler(b, n, false)
		})
	}
}

// BenchmarkHandlerReplay is BenchmarkHandler with replay memory on and each
// request uniquely signed, so every one takes the claim/commit path.
func BenchmarkHandlerReplay(b *testing.B) {
	for _, n := range benchSizes[:2] {
		b.Run(sizeName(n), func(b *testing.B) {
			benchHandler(b, n, true)
		})
	}
}

func benchHandler(b *testing.B, n int, replay bool) {
	rig := newHandlerRig(b, n, replay)
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		k := min(len(rig.reqs), b.N-done)
		rig.build(k)
		b.StartTimer()
		rig.run(k)
		done += k
	}
}

// BenchmarkHandlerQueueVsOff runs the handler with `queue` on (the app up,
// nothing queued: the answer writer, and a look in the storage for the
// return's line, which the live path makes for every delivery) and off in
// alternating rounds, and reports the median per-round ratio of their
// times per op ("x-off").
func BenchmarkHandlerQueueVsOff(b *testing.B) {
	for _, n := range benchSizes[:2] {
		b.Run(sizeName(n), func(b *testing.B) {
			off := newHandlerRig(b, n, false)
			on := newHandlerRigWith(b, n, false, &QueueConfig{})
			// A worker that has scanned the (empty) queue, as in a running
			// gateway. (The live path asks the storage all the same: another
			// gateway may have queued a delivery of the return a moment ago.)
			w := newWorker(on.h.app, on.h.app.queue, zap.NewNop())
			on.h.app.worker.Store(w)
			sideBySide(b, off, on, max(1, min(len(off.reqs), (4<<20)/n)), "queue-ns/op", func() {
				if err := w.refresh(context.Background()); err != nil {
					b.Fatal(err)
				}
			})
			if items, _ := on.h.app.queue.ids(context.Background()); len(items) != 0 {
				b.Fatalf("%d deliveries queued with the app up", len(items))
			}
		})
	}
}

// BenchmarkHandlerVsHMAC runs the handler and a bare pooled HMAC over the
// same bytes in alternating rounds and reports the median per-round ratio
// of their times per op ("x-hmac"), which holds up on a shared machine
// where absolute figures drift.
func BenchmarkHandlerVsHMAC(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			rig := newHandlerRig(b, n, false)
			body := benchBody(n)
			m := hmac.New(sha512.New, []byte(testSecret))
			var out [sha512.Size]byte
			per := max(1, min(len(rig.reqs), (4<<20)/n)) // ops per round
			var ratios, handlerNs, hmacNs []float64
			for b.Loop() {
				rig.build(per)
				t0 := time.Now()
				rig.run(per)
				th := time.Since(t0)
				t0 = time.Now()
				for i := 0; i < per; i++ {
					m.Reset()
					m.Write([]byte("1744831201."))
					m.Write(body)
					m.Sum(out[:0])
				}
				tm := time.Since(t0)
				ratios = append(ratios, float64(th)/float64(tm))
				handlerNs = append(handlerNs, float64(th)/float64(per))
				hmacNs = append(hmacNs, float64(tm)/float64(per))
			}
			b.ReportMetric(median(ratios), "x-hmac")
			b.ReportMetric(median(handlerNs), "handler-ns/op")
			b.ReportMetric(median(hmacNs), "hmac-ns/op")
		})
	}
}

// sideBySide times per requests through off and through on in
// alternating rounds (which goes first alternates too, so neither gains
// from the other's warm caches), before running first in each round when
// set, and reports the median per-round ratio on/off ("x-off") and each
// side's median time per op (onName, "off-ns/op").
func sideBySide(b *testing.B, off, on *handlerRig, per int, onName string, before func()) {
	b.Helper()
	timed := func(r *handlerRig) time.Duration {
		r.build(per)
		t0 := time.Now()
		r.run(per)
		return time.Since(t0)
	}
	var ratios, onNs, offNs []float64
	for round := 0; b.Loop(); round++ {
		if before != nil {
			before()
		}
		var toff, ton time.Duration
		if round%2 == 0 {
			toff, ton = timed(off), timed(on)
		} else {
			ton, toff = timed(on), timed(off)
		}
		ratios = append(ratios, float64(ton)/float64(toff))
		onNs = append(onNs, float64(ton)/float64(per))
		offNs = append(offNs, float64(toff)/float64(per))
	}
	b.ReportMetric(median(ratios), "x-off")
	b.ReportMetric(median(onNs), onName)
	b.ReportMetric(median(offNs), "off-ns/op")
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// handlerRig builds requests the way net/http and Caddy would (a header
// map sized to what arrived, a fresh replacer with Caddy's http provider)
// so that only the handler's own work is timed.
type handlerRig struct {
	h       *Handler
	body    []byte
	sig     string
	replay  bool
	seq     int
	url     *url.URL
	w       *benchWriter
	reqs    []*http.Request
	readers []benchBodyReader
	bodies  [][]byte
}

func newHandlerRig(b *testing.B, n int, replay bool) *handlerRig {
	return newHandlerRigWith(b, n, replay, nil)
}

// newHandlerRigWith is newHandlerRig with a queue configuration (nil: off).
func newHandlerRigWith(b *testing.B, n int, replay bool, queue *QueueConfig) *handlerRig {
	mode := ReplayOff
	if replay {
		mode = ReplayMemory
	}
	h := &Handler{Secrets: []string{testSecret}, MaxBody: 2 << 20, Replay: mode, Queue: queue}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	h.app = testApp(b)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Cleanup() })
	h.logger = zap.NewNop()
	if m, ok := h.replay.(*memoryReplay); ok { // quiet "memory full" warnings
		m.configure(DefaultReplayCapacity, DefaultReplayLease, zap.NewNop())
	}
	now := time.Unix(1744831201, 0)
	h.now = func() time.Time { return now }
	rig := &handlerRig{h: h, body: benchBody(n), replay: replay, w: &benchWriter{h: http.Header{}}}
	rig.sig = verify.Sign(testSecret, now, rig.body)
	rig.url, _ = url.Parse("/webhooks/reready")
	const batch = 1000
	rig.reqs = make([]*http.Request, batch)
	rig.readers = make([]benchBodyReader, batch)
	rig.bodies = make([][]byte, batch)
	return rig
}

func (rig *handlerRig) build(k int) {
	for i := 0; i < k; i++ {
		body, sig := rig.body, rig.sig
		if rig.replay { // a distinct delivery each time: same size, new id
			if rig.bodies[i] == nil {
				rig.bodies[i] = make([]byte, len(rig.body))
			}
			body = rig.bodies[i]
			copy(body, rig.body)
			rig.seq++
			copy(body[len(`{"device_return_id":"`):], fmt.Sprintf("%08d", rig.seq))
			sig = verify.Sign(testSecret, time.Unix(1744831201, 0), body)
		}
		rig.readers[i].Reset(body)
		hdr := make(http.Header, 5)
		hdr["Content-Type"] = []string{"application/json"}
		hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
		hdr["User-Agent"] = []string{"ReReady"}
		hdr["Accept-Encoding"] = []string{"gzip"}
		hdr[hdrSignature] = []string{sig}
		repl := caddy.NewReplacer()
		repl.Map(func(string) (any, bool) { return nil, false }) // as addHTTPVarsToReplacer
		rctx := context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl)
		rctx = context.WithValue(rctx, caddyhttp.VarsCtxKey, map[string]any{})
		rig.reqs[i] = (&http.Request{
			Method:        http.MethodPost,
			URL:           rig.url,
			Header:        hdr,
			Body:          &rig.readers[i],
			ContentLength: int64(len(body)),
			RemoteAddr:    "127.0.0.1:1234",
			RequestURI:    "/webhooks/reready",
		}).WithContext(rctx)
	}
}

func (rig *handlerRig) run(k int) {
	for i := 0; i < k; i++ {
		if err := rig.h.ServeHTTP(rig.w, rig.reqs[i], benchNext{}); err != nil {
			panic(err)
		}
	}
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkParsePayload is the payload parser alone, per body size.
func BenchmarkParsePayload(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			body := benchBody(n)
			var scratch [320]byte
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := verify.ParsePayloadInto(body, scratch[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandlerHistoryVsOff runs the handler with the reready app's
// history on (its flusher writing to a file_system storage meanwhile) and
// off in alternating rounds, and reports the median per-round ratio of
// their times per op ("x-off"); "bodies" keeps each delivery's body too.
func BenchmarkHandlerHistoryVsOff(b *testing.B) {
	for _, bodies := range []bool{false, true} {
		for _, n := range benchSizes[:2] {
			name := sizeName(n)
			if bodies {
				name += "/bodies"
			}
			b.Run(name, func(b *testing.B) {
				off := newHandlerRig(b, n, false)
				on := newHandlerRig(b, n, false)
				cfg := &HistoryConfig{Bodies: bodies}
				on.h.app.history = newHistory(cfg, &certmagic.FileStorage{Path: b.TempDir()}, zap.NewNop(), on.h.app.journal.epoch, nil)
				on.h.app.history.start()
				b.Cleanup(on.h.app.history.stopAndFlush)
				sideBySide(b, off, on, max(1, min(len(off.reqs), (4<<20)/n)), "history-ns/op", nil)
			})
		}
	}
}
