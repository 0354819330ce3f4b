package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestE2EOpsRoutes asks the admin API on Caddy's own admin endpoint, and
// the page's API beneath a real reready_ui route, with wrong methods and
// unknown paths: both answer through the same routes, 405 with Allow and
// 404, in JSON, as Caddy serves them.
func TestE2EOpsRoutes(t *testing.T) {
	tester := caddytest.NewTester(t)
	tester.InitServer(withPorts(fmt.Sprintf(`{
		{{base}}
		storage file_system %[1]s
	}
	%[2]s {
		handle_path /ops/* {
			reready_ui
		}
	}`, t.TempDir(), site)), "caddyfile")

	admin := fmt.Sprintf("http://localhost:%d/reready", caddytest.Default.AdminPort)
	for _, c := range []struct {
		method, url string
		status      int
		allow       string
	}{
		{http.MethodPost, admin + "/deliveries", 405, "GET, HEAD"},
		{http.MethodDelete, admin + "/queue", 405, "GET, HEAD"},
		{http.MethodGet, admin + "/queue/1744831201-0123456789abcdef0123456789abcdef/retry", 405, "POST"},
		{http.MethodGet, admin + "/nothing", 404, ""},
		{http.MethodGet, admin + "/summary", 200, ""},
		{http.MethodPost, site + "/ops/api/summary", 405, "GET, HEAD"},
		{http.MethodGet, site + "/ops/api/nothing", 404, ""},
		{http.MethodGet, site + "/ops/api/queue", 200, ""},
	} {
		t.Run(c.method+" "+strings.TrimPrefix(strings.TrimPrefix(c.url, admin), site), func(t *testing.T) {
			req, _ := http.NewRequest(c.method, c.url, nil)
			if strings.HasPrefix(c.url, site) && c.method != http.MethodGet {
				req.Header.Set("Origin", site) // the page's own origin
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status || resp.Header.Get("Allow") != c.allow {
				t.Fatalf("%d, Allow %q: %s; want %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"), b, c.status, c.allow)
			}
			if !json.Valid(b) || !strings.Contains(resp.Header.Get("Content-Type"), "json") {
				t.Fatalf("answer %q (%s) is not JSON", b, resp.Header.Get("Content-Type"))
			}
			if c.status >= 400 {
				var e struct{ Error string }
				if json.Unmarshal(b, &e) != nil || e.Error == "" {
					t.Fatalf("error body %s has no error", b)
				}
			}
		})
	}
}
