package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/token"
)

// tileColor is the colour of the test's map tiles: no other part of the
// page has it, so the screenshot shows where tiles were drawn.
var tileColor = color.RGBA{R: 0x9e, G: 0xc9, B: 0xf0, A: 0xff}

// tileServer serves 256×256 PNG tiles at /{z}/{x}/{y}.png, as a tile
// server speaks, and counts what it served.
func tileServer(t *testing.T) (template string, served *atomic.Int64) {
	t.Helper()
	var tile bytes.Buffer
	img := image.NewRGBA(image.Rect(0, 0, 256, 256))
	for y := range 256 {
		for x := range 256 {
			c := tileColor
			if x%64 == 0 || y%64 == 0 {
				c = color.RGBA{R: 0x6a, G: 0x8f, B: 0xb0, A: 0xff} // "streets"
			}
			img.Set(x, y, c)
		}
	}
	if err := png.Encode(&tile, img); err != nil {
		t.Fatal(err)
	}
	served = &atomic.Int64{}
	path := regexp.MustCompile(`^/\d+/\d+/\d+\.png$`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !path.MatchString(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		served.Add(1)
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(tile.Bytes())
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/{z}/{x}/{y}.png", served
}

// TestTrackingPageMap opens the tracking page in headless Chromium, on a
// tracking instance whose map tiles come from a tile server the test runs,
// and checks, in the DOM and in a screenshot, that the tiles, the rider's
// marker, the path travelled and the destination pin are drawn, and that
// the marker moves with the rider.
func TestTrackingPageMap(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it")
		}
		t.Skip("chromium is not installed: apt-get install chromium")
	}
	tiles, served := tileServer(t)
	tracking := startTracking(t, ports.Tracking+104, map[string]string{"TRACKING_TILE_URL": tiles})
	o := placeOrder(t, newKey(), orderJSON("c-page-"+uuid.NewString(), "r-page", 500))
	bike := &rider{ID: "rider-" + uuid.NewString()[:8]}
	bike.Token = as(t, token.AudienceRider, bike.ID)
	assignRider(t, o.ID, bike.ID)
	pickUp(t, o.ID, "r-page", bike)
	riderTok, rider := bike.Token, bike.ID
	seq := int64(0)
	post := func(lat, lng float64) {
		seq++
		body := fmt.Sprintf(`{"lat":%f,"lng":%f,"heading":0,"speed_kmh":20,"seq":%d,"ts":%q}`, lat, lng, seq, time.Now().UTC().Format(time.RFC3339Nano))
		if code, _, b := do(t, http.MethodPost, tracking+"/v1/riders/"+rider+"/location",
			map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + riderTok}, body); code != 202 {
			t.Fatalf("post fix = %d %s", code, b)
		}
	}
	// A path before the page opens: it comes from the history, written
	// within a second or so.
	for i := range 5 {
		post(19.005+float64(i)*0.001, 72.838)
	}
	eventually(t, 10*time.Second, "the path stored", func() error {
		if code, p := getPath(t, tracking, o.ID, o.TrackingToken, ""); code != http.StatusOK || p.Fixes < 5 {
			return fmt.Errorf("%d, %d fixes", code, p.Fixes)
		}
		return nil
	})

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(900, 1100),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.UserDataDir(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	page := tracking + "/track/" + o.ID + "?token=" + o.TrackingToken
	if _, err := chromedp.Run(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	if _, err := chromedp.Run(bctx, chromedp.WaitVisible("#map")); err != nil {
		t.Fatalf("no map on %s: %v", page, err)
	}
	// eval reads a number off the page.
	eval := func(js string) float64 {
		v, err := chromedp.Run(bctx, chromedp.Evaluate[float64](js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return v
	}
	attr := func(sel, name string) string {
		r, err := chromedp.Run(bctx, chromedp.AttributeValue(sel, name))
		if err != nil {
			t.Fatal(err)
		}
		return r.Value
	}
	// The marker: the fix it shows, and where on the screen it is.
	marker := func() (seq int64, lat string, x, y float64) {
		n, _ := strconv.ParseInt(attr("#rider", "data-seq"), 10, 64)
		return n, attr("#rider", "data-lat"),
			eval(`document.querySelector("#rider").getBoundingClientRect().x`), eval(`document.querySelector("#rider").getBoundingClientRect().y`)
	}

	eventually(t, 20*time.Second, "first live fix on the page", func() error {
		post(19.010, 72.839)
		time.Sleep(300 * time.Millisecond)
		if eval(`document.querySelectorAll("#rider").length`) == 0 {
			return fmt.Errorf("no rider marker yet")
		}
		if s, _, _, _ := marker(); s == 0 {
			return fmt.Errorf("marker has no fix yet")
		}
		return nil
	})
	eventually(t, 15*time.Second, "tiles, path and pin drawn", func() error {
		loaded := eval(`document.querySelectorAll("img.leaflet-tile-loaded").length`)
		path := eval(`(document.querySelector("path.dabba-path") || {getTotalLength: () => 0}).getTotalLength()`)
		points := eval(`+document.querySelector("#map").dataset.path`)
		pins := eval(`document.querySelectorAll("#dest").length`)
		if loaded == 0 || served.Load() == 0 || path < 20 || points < 6 || pins != 1 {
			return fmt.Errorf("%v tiles loaded (%d served), path %.0f px long of %v points, %v pins", loaded, served.Load(), path, points, pins)
		}
		return nil
	})
	if mode := attr("#map", "data-tiles"); mode == "grid" {
		t.Fatal("the page fell back to the grid though the tiles load")
	}
	s1, lat1, x1, y1 := marker()
	post(19.016, 72.8395)
	want := seq
	eventually(t, 10*time.Second, "marker moved", func() error {
		s2, lat2, x2, y2 := marker()
		if s2 != want || lat2 == lat1 {
			return fmt.Errorf("marker at seq %d (lat %s), want seq %d after %d", s2, lat2, want, s1)
		}
		if x2 == x1 && y2 == y1 {
			return fmt.Errorf("marker still drawn at %.0f,%.0f", x1, y1)
		}
		return nil
	})
	eventually(t, 10*time.Second, "status on the timeline", func() error {
		if attr("body", "data-status") == "" {
			return fmt.Errorf("no status shown")
		}
		return nil
	})

	// The screenshot: tiles, the rider's marker (orange), the pin (green).
	time.Sleep(800 * time.Millisecond) // the marker's glide
	shot, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(os.TempDir()+"/dabba-tracking-page.png", shot, 0o644)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	near := func(c color.Color, want color.RGBA, tol int) bool {
		r, g, b, _ := c.RGBA()
		d := func(a uint32, w uint8) int { return max(int(a>>8)-int(w), int(w)-int(a>>8)) }
		return d(r, want.R) <= tol && d(g, want.G) <= tol && d(b, want.B) <= tol
	}
	counts := map[string]int{}
	wants := map[string]color.RGBA{
		"tiles":  tileColor,
		"rider":  {R: 0xe4, G: 0x57, B: 0x2e, A: 0xff}, // --accent
		"pin":    {R: 0x2e, G: 0x9e, B: 0x5b, A: 0xff}, // --ok
		"street": {R: 0x6a, G: 0x8f, B: 0xb0, A: 0xff},
	}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			c := img.At(x, y)
			for name, w := range wants {
				if near(c, w, 6) {
					counts[name]++
				}
			}
		}
	}
	if counts["tiles"] < 50_000 || counts["rider"] < 50 || counts["pin"] < 50 || counts["street"] < 500 {
		t.Fatalf("screenshot (%s) pixels: %v; want tiles, the rider's marker and the pin drawn", os.TempDir()+"/dabba-tracking-page.png", counts)
	}
}
