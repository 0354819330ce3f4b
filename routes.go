package rereadyverify

import (
	"net/http"
	"slices"
	"strings"
)

// This file is the routes the admin API (/reready/... on the admin
// endpoint) and the deliveries page (api/... beneath the page) share: one
// http.ServeMux of method patterns, so the two surfaces cannot disagree on
// what exists and by which method. The handlers are in admin.go.

// opsRoutes are the operations, by method and path beneath the surface's
// prefix. A GET pattern also matches HEAD (ServeMux's rule), answered like
// GET without the body; before the mux, HEAD was refused with 405.
var opsRoutes = []struct {
	pattern string
	serve   opsFunc
}{
	{"GET /deliveries", serveDeliveries},
	{"GET /deliveries/{id}", serveDelivery},
	{"GET /summary", serveSummary},
	{"POST /replay", serveReplay},
	{"GET /queue", serveQueue},
	{"POST /queue/{id}/retry", serveRetry},
	{"DELETE /queue/{id}", serveDrop},
	{"GET /pause", servePauseState},
	{"POST /pause", servePause},
	{"POST /resume", serveResume},
}

// opsMux routes opsRoutes. It is served only through serveOps, which
// turns what the mux answers by itself (plain-text 404 and 405) into JSON.
var opsMux = func() *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range opsRoutes {
		mux.Handle(rt.pattern, rt.serve)
	}
	return mux
}()

// opsPaths lists the operations' paths for the 404 message:
// "/deliveries, /summary, /queue, /queue/<id>/retry, /queue/<id>, /pause
// or /resume".
var opsPaths = func() string {
	var paths []string
	for _, rt := range opsRoutes {
		_, p, _ := strings.Cut(rt.pattern, " ")
		if p = strings.NewReplacer("{", "<", "}", ">").Replace(p); !slices.Contains(paths, p) {
			paths = append(paths, p) // once, whatever its methods
		}
	}
	last := len(paths) - 1
	return strings.Join(paths[:last], ", ") + " or " + paths[last]
}()

// opsFunc is an operation: it writes its JSON answer to w, or returns
// what it refused with, which each surface writes in its own way.
type opsFunc func(w http.ResponseWriter, r *http.Request) *opsError

// ServeHTTP runs the operation for opsMux: w is the opsRouting serveOps
// gave the mux, and the operation gets the real ResponseWriter.
func (f opsFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o := w.(*opsRouting)
	o.routed = true
	o.err = f(o.w, r)
}

// opsRouting is the ResponseWriter serveOps gives opsMux. An operation
// writes to w, the real one; what the mux writes by itself (its 404, its
// 405 with Allow, a redirect to a cleaned path) lands here instead, so
// serveOps can answer JSON.
type opsRouting struct {
	w      http.ResponseWriter
	header http.Header // of the mux's own answer
	status int         // of the mux's own answer
	routed bool        // an operation ran
	err    *opsError   // and refused with this
}

func (o *opsRouting) Header() http.Header { return o.header }

func (o *opsRouting) WriteHeader(code int) {
	if o.status == 0 {
		o.status = code
	}
}

func (o *opsRouting) Write(b []byte) (int, error) {
	o.WriteHeader(http.StatusOK)
	return len(b), nil
}

// serveOps answers the operation at r's path, which is the path beneath
// the surface's prefix (see beneath): /deliveries, /summary, /queue,
// /queue/<id>/retry or /queue/<id>. A known path asked with another
// method is refused 405 with Allow (GET routes allow HEAD too), anything
// else 404; the caller writes the error as JSON.
func serveOps(w http.ResponseWriter, r *http.Request) *opsError {
	o := &opsRouting{w: w, header: http.Header{}}
	opsMux.ServeHTTP(o, r)
	switch {
	case o.routed:
		return o.err
	case o.status == http.StatusMethodNotAllowed:
		allow := o.header.Get("Allow")
		w.Header().Set("Allow", allow)
		return opsErrorf(http.StatusMethodNotAllowed, "method not allowed; want %s", allow)
	}
	return opsErrorf(http.StatusNotFound, "not found: no such operation %q; want %s", clip(r.URL.Path), opsPaths)
}

// opsRouted reports whether opsMux has a route for r's path, for r's
// method or another, without running an operation: when nothing matches
// r's method, the handler Handler returns is the mux's own 404 or 405 (or
// a redirect), which writes to a throwaway opsRouting only.
func opsRouted(r *http.Request) bool {
	h, pattern := opsMux.Handler(r)
	if pattern != "" {
		return true
	}
	o := &opsRouting{header: http.Header{}}
	h.ServeHTTP(o, r)
	return o.status == http.StatusMethodNotAllowed
}

// beneath returns a shallow copy of r whose path is the part of r's path
// after prefix, as http.StripPrefix makes it.
func beneath(r *http.Request, prefix string) *http.Request {
	r2 := r.WithContext(r.Context())
	u := *r.URL
	u.Path = strings.TrimPrefix(r.URL.Path, prefix)
	u.RawPath = strings.TrimPrefix(r.URL.RawPath, prefix)
	r2.URL = &u
	return r2
}
