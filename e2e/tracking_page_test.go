package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/token"
)

// TestTrackingPageMarkerMoves opens the tracking page in headless Chromium
// and checks that the rider's marker moves when the rider posts fixes.
func TestTrackingPageMarkerMoves(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it")
		}
		t.Skip("chromium is not installed: apt-get install chromium")
	}
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
		if code, _, b := do(t, http.MethodPost, base(ports.Tracking)+"/v1/riders/"+rider+"/location",
			map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + riderTok}, body); code != 202 {
			t.Fatalf("post fix = %d %s", code, b)
		}
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.UserDataDir(t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	page := base(ports.Tracking) + "/track/" + o.ID + "?token=" + o.TrackingToken
	if _, err := chromedp.Run(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	if _, err := chromedp.Run(bctx, chromedp.WaitVisible("#map")); err != nil {
		t.Fatalf("no map on %s: %v", page, err)
	}
	attr := func(name string) string {
		r, err := chromedp.Run(bctx, chromedp.AttributeValue("#rider", name))
		if err != nil {
			t.Fatal(err)
		}
		return r.Value
	}
	// marker returns the fix the marker shows and where it is drawn.
	marker := func() (seq int64, lat, transform string) {
		n, _ := strconv.ParseInt(attr("data-seq"), 10, 64)
		return n, attr("data-lat"), attr("transform")
	}
	// The assignment reaches tracking through its queue: post until the
	// page shows a first fix.
	var lat1, at1 string
	eventually(t, 20*time.Second, "first fix on the page", func() error {
		post(19.020, 72.840)
		time.Sleep(300 * time.Millisecond)
		var s int64
		s, lat1, at1 = marker()
		if s == 0 || at1 == "" {
			return fmt.Errorf("marker has no fix yet")
		}
		return nil
	})
	post(19.030, 72.850)
	want := seq
	eventually(t, 10*time.Second, "marker moved", func() error {
		s, lat2, at2 := marker()
		if s != want || lat2 == lat1 {
			return fmt.Errorf("marker at seq %d (lat %s), want seq %d", s, lat2, want)
		}
		if at2 == at1 {
			return fmt.Errorf("marker still drawn at %s", at1)
		}
		return nil
	})
	// The status timeline shows where the order is.
	eventually(t, 10*time.Second, "status on the timeline", func() error {
		r, err := chromedp.Run(bctx, chromedp.AttributeValue("body", "data-status"))
		if err != nil {
			return err
		}
		if r.Value == "" {
			return fmt.Errorf("no status shown")
		}
		return nil
	})
	if png, err := chromedp.Run(bctx, chromedp.CaptureScreenshot()); err == nil {
		_ = os.WriteFile(os.TempDir()+"/dabba-tracking-page.png", png, 0o644)
	}
}
