package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Upstream is a fake app at a fixed 127.0.0.1 address. It can be down
// (nothing listening: connection refused) and come up again on the same
// address; it records every request, with its headers and body, and
// answers each by a rule.
type Upstream struct {
	Addr string // 127.0.0.1:port

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
	recs []*Request
	rule func(*Request) Answer
}

// Request is one request the app received.
type Request struct {
	At       time.Time
	Host     string
	URI      string
	Header   http.Header
	Body     []byte
	Status   int       // what the app answered; 0 until it did (or if abandoned)
	Answered time.Time // when it answered
}

// ID is the request's X-ReReady-Delivery-Id.
func (r *Request) ID() string { return r.Header.Get("X-Reready-Delivery-Id") }

// ReturnID is the request's X-ReReady-Device-Return-Id.
func (r *Request) ReturnID() string { return r.Header.Get("X-Reready-Device-Return-Id") }

// Answer is how the app answers a request: Status (0: 200 {"ok":true}),
// extra headers, Body (by default {"ok":true} below 300, else
// {"ok":false}), after Hold is closed if set, and after Delay.
type Answer struct {
	Status int
	Header map[string]string
	Body   string
	Hold   <-chan struct{}
	Delay  time.Duration
}

// NewUpstream reserves an address for an app that is down until Up is
// called, and takes it down when the test ends.
func NewUpstream(t testing.TB) *Upstream {
	t.Helper()
	a := &Upstream{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t))}
	t.Cleanup(a.Down)
	return a
}

// StartUpstream is NewUpstream, up.
func StartUpstream(t testing.TB) *Upstream {
	t.Helper()
	a := NewUpstream(t)
	a.Up(t)
	return a
}

// SetRule sets how the app answers from now on (nil: 200). The rule runs
// under the app's lock, one request at a time, and must not block.
func (a *Upstream) SetRule(rule func(*Request) Answer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rule = rule
}

// Locked runs f under the app's lock, as rules run: for changing the
// state a rule reads.
func (a *Upstream) Locked(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
}

// Answer makes the app answer status to every request from now on (0:
// 200 {"ok":true}).
func (a *Upstream) Answer(status int) {
	if status == 0 {
		a.SetRule(nil)
		return
	}
	a.SetRule(func(*Request) Answer { return Answer{Status: status} })
}

// Up starts listening on the app's address, retrying while the port is
// still held (ReadyTimeout at most).
func (a *Upstream) Up(t testing.TB) {
	t.Helper()
	var l net.Listener
	var err error
	for deadline := time.Now().Add(ReadyTimeout); ; {
		if l, err = net.Listen("tcp", a.Addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app: listening on %s: %v", a.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv := &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: ReplyTimeout}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	a.mu.Lock()
	a.srv, a.done = srv, done
	a.mu.Unlock()
}

// Down closes the listener and every connection: the gateway's next dial
// is refused.
func (a *Upstream) Down() {
	a.mu.Lock()
	srv, done := a.srv, a.done
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

func (a *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &Request{At: time.Now(), Host: r.Host, URI: r.RequestURI, Header: r.Header.Clone(), Body: body}
	a.mu.Lock()
	a.recs = append(a.recs, rec)
	var ans Answer
	if a.rule != nil {
		ans = a.rule(rec) // under the lock: rules keep state
	}
	a.mu.Unlock()
	if ans.Hold != nil {
		select {
		case <-ans.Hold:
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
	if ans.Delay > 0 {
		select {
		case <-time.After(ans.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if ans.Status == 0 {
		ans.Status = http.StatusOK
	}
	if ans.Body == "" {
		ans.Body = `{"ok":true}`
		if ans.Status >= 300 {
			ans.Body = `{"ok":false}`
		}
	}
	// Noted before answering, so anything the gateway does after the
	// answer comes later.
	a.mu.Lock()
	rec.Status, rec.Answered = ans.Status, time.Now()
	a.mu.Unlock()
	for k, v := range ans.Header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ans.Status)
	io.WriteString(w, ans.Body)
}

// Records returns a copy of what the app received so far.
func (a *Upstream) Records() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Request, len(a.recs))
	for i, r := range a.recs {
		out[i] = *r
	}
	return out
}

// ForID returns the requests that carried delivery id.
func (a *Upstream) ForID(id string) []Request {
	var out []Request
	for _, r := range a.Records() {
		if r.ID() == id {
			out = append(out, r)
		}
	}
	return out
}

// Received reports whether a request with delivery id reached the app.
func (a *Upstream) Received(id string) bool { return len(a.ForID(id)) > 0 }

// Delivered counts the requests with delivery id that the app answered 2xx.
func (a *Upstream) Delivered(id string) int {
	n := 0
	for _, r := range a.ForID(id) {
		if r.Status >= 200 && r.Status < 300 {
			n++
		}
	}
	return n
}

// WaitDelivered waits (timeout at most) until the app has answered id 2xx,
// and returns that request.
func (a *Upstream) WaitDelivered(t testing.TB, id string, timeout time.Duration) Request {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range a.ForID(id) {
			if r.Status >= 200 && r.Status < 300 {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery %s did not reach the app within %s (it got %d request(s) with that id)", id, timeout, len(a.ForID(id)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
