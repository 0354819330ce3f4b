package rereadyverify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"fmt"

	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
			benchHandler(b, n)
		})
	}
}

func benchHandler(b *testing.B, n int) {
	h := &Handler{Secrets: []string{testSecret}, MaxBody: 2 << 20, Replay: ReplayOff}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	h.logger = zap.NewNop()
	now := time.Unix(1744831201, 0)
	h.now = func() time.Time { return now }
	body := benchBody(n)
	sig := Sign(testSecret, now, body)
	u, _ := url.Parse("/webhooks/reready")
	w := &benchWriter{h: http.Header{}}

	const batch = 1000
	reqs := make([]*http.Request, batch)
	readers := make([]benchBodyReader, batch)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		k := min(batch, b.N-done)
		for i := 0; i < k; i++ {
			readers[i].Reset(body)
			// As net/http builds it: a header map sized to what arrived.
			hdr := make(http.Header, 5)
			hdr["Content-Type"] = []string{"application/json"}
			hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
			hdr["User-Agent"] = []string{"ReReady"}
			hdr["Accept-Encoding"] = []string{"gzip"}
			hdr[hdrSignature] = []string{sig}
			repl := caddy.NewReplacer()
			// Caddy's server adds its http.* provider to every request's
			// replacer (addHTTPVarsToReplacer); do the same.
			repl.Map(func(string) (any, bool) { return nil, false })
			rctx := context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl)
			rctx = context.WithValue(rctx, caddyhttp.VarsCtxKey, map[string]any{})
			reqs[i] = (&http.Request{
				Method:        http.MethodPost,
				URL:           u,
				Header:        hdr,
				Body:          &readers[i],
				ContentLength: int64(len(body)),
				RemoteAddr:    "127.0.0.1:1234",
				RequestURI:    "/webhooks/reready",
			}).WithContext(rctx)
		}
		b.StartTimer()
		for i := 0; i < k; i++ {
			if err := h.ServeHTTP(w, reqs[i], benchNext{}); err != nil {
				b.Fatal(err)
			}
		}
		done += k
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
