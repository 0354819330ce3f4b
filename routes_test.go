package rereadyverify

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// surfaces runs one operation, given by method and path beneath the
// prefix, through the admin API and through the page's API, and returns
// the status, the headers and the error message of the JSON body ("" when
// the body is no JSON error).
var surfaces = []struct {
	name string
	do   func(t *testing.T, u *UI, method, p string) (int, http.Header, string)
}{
	{"admin", func(t *testing.T, _ *UI, method, p string) (int, http.Header, string) {
		code, hdr, body := adminDo(t, method, "/reready"+p)
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal([]byte(body), &e)
		return code, hdr, e.Error
	}},
	{"page", func(t *testing.T, u *UI, method, p string) (int, http.Header, string) {
		// Same origin, so that the mutation check lets the request reach
		// the routes.
		w, err := serveUI(t, u, method, "http://example.com/ops/api"+p, "Sec-Fetch-Site", "same-origin")
		if err != nil {
			t.Fatalf("handler error %v; want a JSON answer", err)
		}
		var e struct {
			Error string `json:"error"`
		}
		if w.Header().Get("Content-Type") == "application/json" {
			json.Unmarshal(w.Body.Bytes(), &e)
		}
		return w.Code, w.Header(), e.Error
	}},
}

// A known path asked with another method is refused 405, with Allow
// naming the route's method (GET routes allow HEAD too) and a JSON
// error, and runs nothing.
func TestOpsRoutesWrongMethod(t *testing.T) {
	u := newTestUI(t)
	a, it := queueTestApp(t)
	retry, drop := "/queue/"+it.ID+"/retry", "/queue/"+it.ID
	tests := []struct {
		path    string
		methods []string
		allow   string
	}{
		{"/deliveries", []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"}, "GET, HEAD"},
		{"/summary", []string{"POST", "DELETE"}, "GET, HEAD"},
		{"/queue", []string{"POST", "PUT", "DELETE"}, "GET, HEAD"},
		{retry, []string{"GET", "HEAD", "PUT", "DELETE"}, "POST"},
		{drop, []string{"GET", "HEAD", "POST", "PUT", "PATCH"}, "DELETE"},
	}
	for _, s := range surfaces {
		for _, tc := range tests {
			for _, m := range tc.methods {
				t.Run(s.name+" "+m+" "+tc.path, func(t *testing.T) {
					code, hdr, msg := s.do(t, u, m, tc.path)
					if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != tc.allow {
						t.Fatalf("status %d, Allow %q; want 405, %q", code, hdr.Get("Allow"), tc.allow)
					}
					if msg != "method not allowed; want "+tc.allow {
						t.Errorf("error %q", msg)
					}
				})
			}
		}
	}
	stored, err := a.queue.loadItem(context.Background(), it.ID)
	if err != nil || stored.Attempts != it.Attempts || !stored.NextAttemptAt.Equal(*it.NextAttemptAt) {
		t.Fatalf("the item changed after refused requests: %+v, %v", stored, err)
	}
}

// A path no route has answers 404 with a JSON error listing the
// operations, whatever the method.
func TestOpsRoutesUnknownPath(t *testing.T) {
	u := newTestUI(t)
	withLiveApp(t, nil)
	for _, s := range surfaces {
		paths := []string{"/nope", "/deliveries.json", "/Queue"}
		if s.name == "admin" {
			// Beneath the page, these are the page's (a file, a
			// redirect), as before the mux.
			paths = append(paths, "/", "/deliveries/", "/queue/", "/queue/1-00000000000000000000000000000000/explode",
				"/queue/1-00000000000000000000000000000000/retry/", "/queue/a/b/c", "/summary/x")
		}
		for _, p := range paths {
			for _, m := range []string{"GET", "POST", "DELETE"} {
				t.Run(s.name+" "+m+" "+p, func(t *testing.T) {
					code, hdr, msg := s.do(t, u, m, p)
					if code != http.StatusNotFound || hdr.Get("Allow") != "" {
						t.Fatalf("status %d, Allow %q; want 404 and no Allow", code, hdr.Get("Allow"))
					}
					if !strings.HasPrefix(msg, "not found: no such operation") ||
						!strings.HasSuffix(msg, "; want "+opsPaths) {
						t.Errorf("error %q", msg)
					}
				})
			}
		}
	}
}

// HEAD is answered on GET routes, as ServeMux matches it (the server
// sends no body); before the mux it was refused 405.
func TestOpsRoutesHead(t *testing.T) {
	u := newTestUI(t)
	withLiveApp(t, nil)
	for _, s := range surfaces {
		for _, p := range []string{"/deliveries", "/summary", "/queue"} {
			t.Run(s.name+" "+p, func(t *testing.T) {
				code, hdr, msg := s.do(t, u, "HEAD", p)
				if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" || msg != "" {
					t.Fatalf("status %d, Content-Type %q, error %q; want 200 JSON", code, hdr.Get("Content-Type"), msg)
				}
			})
		}
	}
}

// The 404 message lists the routes from their patterns.
func TestOpsPaths(t *testing.T) {
	if want := "/deliveries, /deliveries/<id>, /summary, /replay, /queue, /queue/<id>/retry, /queue/<id>, /pause or /resume"; opsPaths != want {
		t.Fatalf("opsPaths %q, want %q", opsPaths, want)
	}
}
