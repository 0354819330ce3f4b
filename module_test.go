package rereadyverify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testSecret signs the handler tests' deliveries.
const testSecret = "ssk_test_4f9a1c2b7d3e8f60"

func provision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	t.Cleanup(func() { h.Cleanup() })
	h.app = testApp(t)
	return h.Provision(ctx)
}

func TestProvisionDefaults(t *testing.T) {
	h := Handler{Secrets: []string{"ssk_a"}}
	if err := provision(t, &h); err != nil {
		t.Fatal(err)
	}
	if h.Tolerance != caddy.Duration(DefaultTolerance) || h.MaxBody != DefaultMaxBody || h.BodyTimeout != caddy.Duration(DefaultBodyTimeout) {
		t.Fatalf("defaults not applied: %+v", h)
	}
	if !h.verifier.ChecksSignature() || h.verifier.ChecksToken() {
		t.Fatal("wrong checks enabled")
	}
}

func TestProvisionPlaceholders(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("ssk_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	t.Setenv("RR_TEST_SECRET", "ssk_from_env")
	t.Setenv("RR_TEST_EMPTY", "")

	h := Handler{Secrets: []string{"{env.RR_TEST_SECRET}", "{file." + file + "}"}, Token: "{env.RR_TEST_SECRET}-tok"}
	if err := provision(t, &h); err != nil {
		t.Fatal(err)
	}
	// The file's trailing newline is not part of the key.
	for _, s := range []string{"ssk_from_env", "ssk_from_file"} {
		sig, _ := verify.ParseSignatureHeader("t=1,v=" + verify.MAC(s, "1", []byte("b")))
		if h.verifier.Match(sig, []byte("b")) != 0 {
			t.Fatalf("secret %q not in use", s)
		}
	}
	if _, err := h.verifier.CheckToken("token=ssk_from_env-tok"); err != nil {
		t.Fatalf("token: %v", err)
	}
	// The config keeps the placeholders (adapt output never holds secrets).
	if h.Secrets[0] != "{env.RR_TEST_SECRET}" {
		t.Fatalf("config rewritten: %v", h.Secrets)
	}

	tests := []struct {
		name string
		h    Handler
		want string
	}{
		{"unset env", Handler{Secrets: []string{"{env.RR_TEST_UNSET_XYZ}"}}, "secret 1: {env.RR_TEST_UNSET_XYZ} expanded to an empty"},
		{"empty env", Handler{Secrets: []string{"ssk_ok", "{env.RR_TEST_EMPTY}"}}, "secret 2: {env.RR_TEST_EMPTY}"},
		{"missing file", Handler{Secrets: []string{"{file." + filepath.Join(dir, "nope") + "}"}}, "secret 1: {file."},
		{"empty file", Handler{Secrets: []string{"{file." + empty + "}"}}, "secret 1: {file."},
		{"empty token", Handler{Token: "{env.RR_TEST_EMPTY}"}, "token: {env.RR_TEST_EMPTY}"},
		{"empty literal", Handler{Secrets: []string{""}}, "secret 1 is empty"},
		{"nothing", Handler{}, "at least one secret or a token"},
		{"negative tolerance", Handler{Secrets: []string{"ssk_a"}, Tolerance: -1}, "tolerance"},
		{"negative max_body", Handler{Secrets: []string{"ssk_a"}, MaxBody: -1}, "max_body -1"},
		{"negative body_timeout", Handler{Secrets: []string{"ssk_a"}, BodyTimeout: -1}, "body_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := provision(t, &tc.h)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWarnUnusualSecrets(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	warnUnusualSecrets(zap.New(core), []string{"ssk_fine", "not-a-reready-secret", "ssk_also_fine"})
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d warnings, want 1", len(entries))
	}
	if n, _ := entries[0].ContextMap()["secret"].(int64); n != 2 {
		t.Fatalf("warning names secret %v, want 2", entries[0].ContextMap())
	}
	for _, f := range entries[0].Context {
		if strings.Contains(f.String, "not-a-reready") {
			t.Fatal("warning logs the secret")
		}
	}
}

func TestBufClass(t *testing.T) {
	prev := 0
	for n := 1; n <= 1<<maxBufShift; n += 1 + n/7 {
		_, size, ok := bufClass(n)
		if !ok || size < n {
			t.Fatalf("bufClass(%d) = %d, %v", n, size, ok)
		}
		if n > 1<<minBufShift && float64(size) > 1.5*float64(n) {
			t.Fatalf("bufClass(%d) = %d: more than 1.5x", n, size)
		}
		if size < prev {
			t.Fatalf("classes not monotonic at %d", n)
		}
		prev = size
		// A buffer of a class size maps back to the same class.
		if idx, s2, _ := bufClass(size); s2 != size || idx < 0 {
			t.Fatalf("class size %d maps to %d", size, s2)
		}
	}
	if _, _, ok := bufClass(1<<maxBufShift + 1); ok {
		t.Fatal("largest class should not be pooled")
	}
}

func TestReadBody(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000) // 100,000 bytes
	tests := []struct {
		name    string
		r       io.Reader
		hint    int64
		limit   int64
		want    []byte
		wantErr error
	}{
		{"exact content length", bytes.NewReader(data), int64(len(data)), int64(len(data)), data, nil},
		{"chunked, grows", iotest.HalfReader(bytes.NewReader(data)), -1, 1 << 20, data, nil},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data[:5000])), -1, 5000, data[:5000], nil},
		{"chunked at the limit", bytes.NewReader(data), -1, int64(len(data)), data, nil},
		{"chunked over the limit", bytes.NewReader(data), -1, int64(len(data) - 1), nil, errTooLarge},
		{"more than declared", bytes.NewReader(data), 10, 50, nil, errTooLarge},
		{"empty", bytes.NewReader(nil), 0, 10, []byte{}, nil},
		{"declared big, sent small", bytes.NewReader(data[:10]), 50 << 20, 100 << 20, data[:10], nil},
		{"declared big, sent big", bytes.NewReader(bytes.Repeat(data, 30)), 3_000_000, 100 << 20, bytes.Repeat(data, 30), nil},
		{"read error", iotest.ErrReader(io.ErrUnexpectedEOF), -1, 10, nil, io.ErrUnexpectedEOF},
		{"error mid-body", io.MultiReader(bytes.NewReader(data[:3000]), iotest.ErrReader(io.ErrUnexpectedEOF)), -1, 1 << 20, nil, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := readBody(tc.r, tc.hint, tc.limit)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var got []byte
			if ref != nil {
				got = *ref
			}
			if err == nil && !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
			// A declared length sizes the buffer to within 1.5x, but never
			// reserves more than maxUpfront before the bytes arrive.
			if err == nil && tc.hint >= 0 && cap(got) > max(len(tc.want)*3/2+1<<minBufShift, min(int(tc.hint), maxUpfront)) {
				t.Fatalf("buffer cap %d for %d bytes declared as %d", cap(got), len(got), tc.hint)
			}
		})
	}
}

func TestBodyReaderDetach(t *testing.T) {
	ref := getBuf(5)
	*ref = append(*ref, "hello"...)
	br := &bodyReader{ref: ref, buf: *ref}
	p := make([]byte, 2)
	if n, err := br.Read(p); n != 2 || err != nil || string(p) != "he" {
		t.Fatalf("read %d %v %q", n, err, p)
	}
	br.detach()
	if _, err := br.Read(p); err != io.ErrClosedPipe {
		t.Fatalf("read after detach: %v", err)
	}
	br.detach() // idempotent
}

func TestIsReReadyHeader(t *testing.T) {
	for k, want := range map[string]bool{
		"X-Reready-State":    true,
		"x-reready-state":    true,
		"X_ReReady_State":    true,
		"X-Reready_State":    true,
		"X-Reready-":         true,
		"X-Reready":          false,
		"X-Ready-State":      false,
		"Content-Type":       false,
		"X-Rereadyy-State":   false,
		"Y-Reready-State":    false,
		"X-Reready\x00State": false,
	} {
		if got := isReReadyHeader(k); got != want {
			t.Errorf("isReReadyHeader(%q) = %v", k, got)
		}
	}
}

// replayRig serves signed requests through a provisioned handler with
// replay memory and an injected clock, straight into ServeHTTP.
type replayRig struct {
	h   *Handler
	now time.Time
}

func newReplayRig(t *testing.T) *replayRig {
	rig := &replayRig{now: time.Unix(1744831201, 0)}
	rig.h = &Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(5 * time.Minute)}
	if err := provision(t, rig.h); err != nil {
		t.Fatal(err)
	}
	rig.h.now = func() time.Time { return rig.now }
	return rig
}

// serve sends body signed at ts through the handler to next and returns
// the handler's error and the response recorded.
func (rig *replayRig) serve(body []byte, ts int64, next caddyhttp.HandlerFunc) (resp *httptest.ResponseRecorder, err error) {
	req := httptest.NewRequest(http.MethodPost, "/hook", bytes.NewReader(body))
	req.Header.Set(verify.SignatureHeader, verify.Sign(testSecret, time.Unix(ts, 0), body))
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	ctx, cancel := context.WithCancel(ctx) // over when ServeHTTP is, as in net/http
	defer cancel()
	resp = httptest.NewRecorder()
	defer func() {
		if p := recover(); p != nil && p != http.ErrAbortHandler {
			panic(p)
		}
	}()
	err = rig.h.ServeHTTP(resp, req.WithContext(ctx), next)
	return resp, err
}

func TestReplayDecidedByWhatTheAppAnswered(t *testing.T) {
	rig := newReplayRig(t)
	calls := 0
	counting := func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }
	tests := []struct {
		name      string
		first     caddyhttp.HandlerFunc
		remembers bool
	}{
		{"2xx answered", func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(201); return nil }, true},
		{"nothing written, no error (net/http answers 200)", func(w http.ResponseWriter, r *http.Request) error { return nil }, true},
		// reverse_proxy panics with ErrAbortHandler when copying the app's
		// answer to a sender that went away: the app still took the event.
		{"2xx then the copy to the sender aborted", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(200)
			panic(http.ErrAbortHandler)
		}, true},
		{"5xx answered", func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(500); return nil }, false},
		{"upstream down (502 error)", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("dial refused"))
		}, false},
		{"aborted before any answer", func(w http.ResponseWriter, r *http.Request) error { panic(http.ErrAbortHandler) }, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(fmt.Sprintf(`{"device_return_id":"d%d","state":"complete"}`, i))
			ts := rig.now.Unix()
			rig.serve(body, ts, tc.first)
			calls = 0
			resp, err := rig.serve(body, ts, counting)
			if err != nil {
				t.Fatal(err)
			}
			if remembered := calls == 0; remembered != tc.remembers {
				t.Fatalf("repeat forwarded %d times (answer %d %q); want remembered=%v", calls, resp.Code, resp.Body, tc.remembers)
			}
		})
	}
}

// A repeat stays 409 for as long as the first is in flight, however long.
func TestReplayInFlightDoesNotLapse(t *testing.T) {
	rig := newReplayRig(t)
	body := []byte(`{"device_return_id":"slow","state":"complete"}`)
	ts := rig.now.Unix()
	inside, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		rig.serve(body, ts, func(w http.ResponseWriter, r *http.Request) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	rig.now = rig.now.Add(4 * time.Minute) // well past the stored-claim lease, inside tolerance
	_, err := rig.serve(body, ts, func(w http.ResponseWriter, r *http.Request) error {
		t.Error("repeat forwarded while the first is in flight")
		return nil
	})
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != http.StatusConflict {
		t.Fatalf("repeat in flight: %v, want 409", err)
	}
	close(release)
	<-done
}

// A delivery is remembered at least until its t is stale: a t up to
// tolerance ahead is accepted until t + tolerance (+ the second's rest).
func TestReplayTTLCoversTheAcceptanceWindow(t *testing.T) {
	rig := newReplayRig(t)
	now := rig.now.Unix()
	for _, ts := range []int64{now, now - 300, now + 300} {
		ttl := rig.h.replayTTL(ts)
		if ttl < 10*time.Minute {
			t.Errorf("t=now%+d: ttl %s, want at least 2 x tolerance", ts-now, ttl)
		}
		if end := rig.now.Add(ttl); !end.After(time.Unix(ts+300, 999_999_999)) {
			t.Errorf("t=now%+d: remembered until %s, but t passes the check until %s", ts-now, end, time.Unix(ts+301, 0))
		}
	}
}
