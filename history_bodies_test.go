package rereadyverify

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// newID is a delivery id of time t with a random digest.
func newID(t time.Time) deliveryID {
	id := deliveryID{t: t.Unix()}
	_, _ = rand.Read(id.h[:])
	return id
}

// Bodies are written a pack per flush and per hour of their ids' t, within
// historyPackMax bodies; a body is found again reading only the packs whose
// span holds its t.
func TestHistoryBodyPacks(t *testing.T) {
	st := &storeFailStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	a, logs := historyApp(t, st, HistoryConfig{Bodies: true}, 100)
	hour := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	var ids []deliveryID
	for i := range historyPackMax + 400 { // two packs in this hour
		ids = append(ids, newID(hour.Add(time.Duration(i)*time.Second)))
	}
	for i := range 100 { // one in the next
		ids = append(ids, newID(hour.Add(time.Hour+time.Duration(i)*time.Second)))
	}
	bodyOf := func(id deliveryID) []byte { return []byte(`{"n":"` + id.String() + `"}`) }
	for _, id := range ids {
		a.history.keepBody(&historyBody{DeliveryID: id.String(), Body: bodyOf(id), Headers: map[string]string{hdrDeliveryID: id.String()}})
	}
	a.history.flush(context.Background())
	if n := st.stores.Load(); n != 3 {
		t.Fatalf("%d bodies written in %d objects, want 3 packs", len(ids), n)
	}
	found, err := findBodies(context.Background(), st, ids)
	if err != nil || len(found) != len(ids) {
		t.Fatalf("found %d of %d: %v", len(found), len(ids), err)
	}
	for _, id := range ids {
		if b := found[id]; !bytes.Equal(b.Body, bodyOf(id)) || b.Headers[hdrDeliveryID] != id.String() || b.Node != "node-a" {
			t.Fatalf("body of %s: %+v", id, b)
		}
	}
	// One body: one listing, one pack read.
	for _, id := range []deliveryID{ids[5], ids[historyPackMax+100], ids[len(ids)-1]} {
		st.loads.Store(0)
		b, err := a.history.loadBody(context.Background(), id)
		if err != nil || !bytes.Equal(b.Body, bodyOf(id)) {
			t.Fatalf("loadBody %s: %v %v", id, b, err)
		}
		if n := st.loads.Load(); n != 1 {
			t.Errorf("loadBody %s read %d packs, want 1", id, n)
		}
	}
	if _, err := a.history.loadBody(context.Background(), newID(hour.Add(30*time.Minute))); err == nil || !strings.Contains(err.Error(), "not exist") {
		t.Errorf("an unknown id: %v, want not-exist", err)
	}

	// A body already written is not written again.
	st.stores.Store(0)
	a.history.keepBody(&historyBody{DeliveryID: ids[0].String(), Body: []byte("again")})
	a.history.flush(context.Background())
	if n := st.stores.Load(); n != 0 {
		t.Errorf("a body written twice (%d stores)", n)
	}

	// While the storage fails, bodies wait for the next flush.
	st.fail.Store(true)
	late := []deliveryID{newID(hour.Add(10 * time.Minute)), newID(hour.Add(11 * time.Minute))}
	for _, id := range late {
		a.history.keepBody(&historyBody{DeliveryID: id.String(), Body: bodyOf(id)})
	}
	a.history.flush(context.Background())
	a.history.flush(context.Background())
	if found, err := findBodies(context.Background(), st, late); err != nil || len(found) != 0 {
		t.Fatalf("found %d while the storage failed: %v", len(found), err)
	}
	st.fail.Store(false)
	a.history.flush(context.Background())
	if found, err := findBodies(context.Background(), st, late); err != nil || len(found) != 2 {
		t.Fatalf("found %d of the 2 after recovery: %v", len(found), err)
	}
	if n := len(logs.FilterMessageSnippet("writing to storage failed").All()); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
}

// A pack stays within historyPackBytesMax (a body larger than it is a pack
// alone).
func TestHistoryBodyPackBytes(t *testing.T) {
	st := &storeFailStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	a, _ := historyApp(t, st, HistoryConfig{Bodies: true}, 100)
	at := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	sizes := []int{historyPackBytesMax / 2, historyPackBytesMax / 2, 1, historyPackBytesMax + 1, 10}
	var ids []deliveryID
	for i, n := range sizes {
		id := newID(at.Add(time.Duration(i) * time.Second))
		ids = append(ids, id)
		a.history.keepBody(&historyBody{DeliveryID: id.String(), Body: bytes.Repeat([]byte{'x'}, n)})
	}
	a.history.flush(context.Background())
	if n := st.stores.Load(); n != 4 { // [half half] [1] [big] [10]
		t.Errorf("%d packs, want 4", n)
	}
	found, err := findBodies(context.Background(), st, ids)
	if err != nil || len(found) != len(ids) {
		t.Fatalf("found %d of %d: %v", len(found), len(ids), err)
	}
}

// Two gateways that kept the same delivery: the body kept first is the
// one read. A body stored alone (as before packs) is found too.
func TestHistoryBodyFirstKept(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	at := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	id, alone := newID(at), newID(at.Add(time.Second))
	for i, node := range []string{"node-b", "node-a"} { // node-a keeps it later
		withNodeName(t, node)
		h := newHistory(&HistoryConfig{Bodies: true}, st, zap.NewNop(), "00000000000000a"+fmt.Sprint(i), nil)
		h.now = func() time.Time { return at.Add(time.Duration(i) * time.Minute) }
		h.keepBody(&historyBody{DeliveryID: id.String(), Body: []byte(node)})
		h.flush(context.Background())
	}
	data, _ := json.Marshal(historyBody{DeliveryID: alone.String(), Body: []byte("alone")})
	if err := st.Store(context.Background(), historyBodiesPrefix+"/"+hourOf(at)+"/"+alone.String(), data); err != nil {
		t.Fatal(err)
	}
	found, err := findBodies(context.Background(), st, []deliveryID{id, alone})
	if err != nil || string(found[id].Body) != "node-b" || string(found[alone].Body) != "alone" {
		t.Fatalf("found %+v %+v: %v", found[id], found[alone], err)
	}
}

// A kept body is encoded by hand on the request path: it must decode as
// encoding/json would have written it, whatever the strings hold.
func TestHistoryBodyJSON(t *testing.T) {
	at := time.Date(2026, 3, 4, 10, 0, 0, 123456789, time.UTC)
	for _, s := range []string{"", "plain", `quo"te\back`, "ctl\x00\x01\x1f\n\r\t", "héllo ☃ 𝄞", "bad\xffutf8\xc3", "<tag>&amp;", "\u2028\u2029"} {
		id := newID(at)
		rec := bodyRecord{id: id, body: []byte(s + `{"x":1}`), hdr: http.Header{
			hdrState: {s}, hdrDeliveryID: {id.String()}, hdrSignature: {"t=1,v=ab"}, "Content-Type": {"application/json"},
		}, host: s, uri: "/p?" + s, tls: true, server: s, port: 8443}
		data := appendBodyJSON(nil, &rec, "node-"+s, at)
		var got historyBody
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("%q: %v\n%s", s, err, data)
		}
		want := historyBody{DeliveryID: id.String(), Node: "node-" + s, At: at, Body: rec.body,
			Headers: map[string]string{hdrState: s, hdrDeliveryID: id.String()}, Host: s, URI: "/p?" + s, TLS: true, Server: s, Port: 8443}
		ref, _ := json.Marshal(want)
		var wantDecoded historyBody
		if err := json.Unmarshal(ref, &wantDecoded); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, wantDecoded) {
			t.Errorf("%q:\n got %+v\nwant %+v", s, got, wantDecoded)
		}
	}
}

// Keeping a body allocates nothing but, now and then, a pack's buffers.
func TestHistoryKeepAllocs(t *testing.T) {
	h := newHistory(&HistoryConfig{Bodies: true}, &certmagic.FileStorage{Path: t.TempDir()}, zap.NewNop(), "0011223344556677", nil)
	at := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	h.now = func() time.Time { return at }
	rec := bodyRecord{body: bytes.Repeat([]byte("x"), 256), hdr: http.Header{hdrState: {"complete"}, hdrDeviceReturnID: {"r"}}, host: "h", uri: "/hook", server: "srv0", port: 443}
	i := int64(0)
	keep := func() {
		i++
		rec.id = deliveryID{t: at.Unix() + i}
		h.keepRecord(&rec)
	}
	for range 5000 {
		keep()
	}
	if n := testing.AllocsPerRun(4000, keep); n > 0.05 {
		t.Errorf("keepRecord: %.3f allocations per body, want a pack's buffers only (under 0.05)", n)
	}
}

// A batch's entries are encoded by hand: each must decode as
// json.Marshal of its Delivery view would. A field added to Delivery or
// journalEntry fails here until appendDeliveryJSON writes it.
func TestHistoryDeliveryJSON(t *testing.T) {
	if n := reflect.TypeFor[Delivery]().NumField(); n != 19 {
		t.Fatalf("Delivery has %d fields; appendDeliveryJSON writes 19: update it and this count", n)
	}
	if n := reflect.TypeFor[journalEntry]().NumField(); n != 18 {
		t.Fatalf("journalEntry has %d fields; appendDeliveryJSON reads 18: update it and this count", n)
	}
	at := time.Date(2026, 3, 4, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	for i, s := range []string{"", "plain", `quo"te\back`, "ctl\x00\x1f\n", "héllo ☃", "bad\xffutf8", "<tag>&amp;"} {
		e := journalEntry{seq: uint64(i + 1), at: at, probe: i%2 == 0, outcome: "forwarded" + s, reason: Reason(s), status: 200 + i,
			upstreamStatus: 500 + i, attempt: i, state: "complete" + s, test: i%2 == 1, verified: "hmac" + s, key: i,
			duration: []time.Duration{0, time.Microsecond, 1500 * time.Microsecond, 3 * time.Second, 7 * time.Hour, 1, 999}[i], host: s, path: "/p" + s, remoteAddr: s + ":1"}
		if i > 0 {
			e.id = newID(at)
		}
		e.returnID.set(strings.Repeat("r"+s, i*4))
		got := appendDeliveryJSON(nil, &e, "node"+s)
		want := e.view()
		want.Node = "node" + s
		ref, _ := json.Marshal(want)
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("%q: %v\n%s", s, err, got)
		}
		if err := json.Unmarshal(ref, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%q:\n got %s\nwant %s", s, got, ref)
		}
	}
}

// keepBody keeps b as it is, as keepLive and keepItem keep theirs.
func (h *history) keepBody(b *historyBody) {
	id, ok := parseDeliveryID(b.DeliveryID)
	if !ok {
		return
	}
	hdr := http.Header{}
	for k, v := range b.Headers {
		hdr[k] = []string{v}
	}
	h.keepRecord(&bodyRecord{id: id, body: b.Body, hdr: hdr, host: b.Host, uri: b.URI, tls: b.TLS, server: b.Server, port: b.Port})
}
