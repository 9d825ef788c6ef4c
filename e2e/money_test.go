package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dabba/dabba/shared/token"
)

// The money cases: every order's ledger (the provider's charges and
// refunds, payment's rows and events, the e-mails, the restaurant's feed,
// analytics) must come out exactly as its life says, each effect once.
// The fault suite runs them all again under kills
// (TestFaultServicesKilledUnderLoad's mixed load).

// customerOrder places an order as a new customer at price and returns it
// with the customer's token.
func customerOrder(t *testing.T, restaurant string, price int64) (order, string) {
	t.Helper()
	customer := "c-money-" + uuid.NewString()
	return placeOrder(t, newKey(), orderJSON(customer, restaurant, price)), as(t, token.AudienceCustomer, customer)
}

// TestCancelAfterChargeRefunds: a customer cancels an order it was charged
// for: the charge is refunded once, order.refunded reaches the e-mail, the
// restaurant's feed and analytics.
func TestCancelAfterChargeRefunds(t *testing.T) {
	db := mustDB(t)
	o, tok := customerOrder(t, "r-money", 2100)
	waitPaid(t, 20*time.Second, o.ID)
	if code := move(t, tok, o.ID, "cancelled"); code != http.StatusOK {
		t.Fatalf("cancel = %d", code)
	}
	wantLedger(t, db, []string{o.ID}, 30*time.Second, func(string) []effects { return []effects{cancelledAfterCharge} }, nil)
}

// TestCancelBeforeChargeNeverCharges cancels orders before payment charged
// them, whichever of order.placed and order.cancelled payment sees first:
// neither is ever charged.
func TestCancelBeforeChargeNeverCharges(t *testing.T) {
	db := mustDB(t)
	never := func(string) []effects { return []effects{cancelledBeforeCharge} }

	t.Run("PlacedSeenFirst", func(t *testing.T) {
		// Payment is down while the order is placed and cancelled: it
		// finds order.placed first in its queue, for an order that is
		// cancelled already.
		payment := dabba.Proc("payment")
		payment.Kill()
		o, tok := customerOrder(t, "r-money", 2200)
		code := move(t, tok, o.ID, "cancelled")
		revive(t, payment)
		if code != http.StatusOK {
			t.Fatalf("cancel = %d", code)
		}
		wantLedger(t, db, []string{o.ID}, 30*time.Second, never, nil)
	})

	t.Run("CancelledSeenFirst", func(t *testing.T) {
		// The first charge attempt fails, so order.placed waits for its
		// retry while order.cancelled goes through.
		gatewayConfig(t, `{"fail_rate": 1}`)
		defer gatewayConfig(t, `{"fail_rate": 0}`)
		before := gatewayStats(t).InjectedFailures
		o, tok := customerOrder(t, "r-money", 2300)
		eventually(t, 20*time.Second, "a charge attempt refused", func() error {
			if n := gatewayStats(t).InjectedFailures; n == before {
				return fmt.Errorf("%d injected failures", n)
			}
			return nil
		})
		if code := move(t, tok, o.ID, "cancelled"); code != http.StatusOK {
			t.Fatalf("cancel = %d", code)
		}
		// Payment records the void before the retry (1 s later) finds the
		// order cancelled.
		eventually(t, 20*time.Second, "the cancellation recorded by payment", func() error {
			var status string
			err := db.QueryRow(context.Background(), "SELECT status FROM payments WHERE order_id = $1", o.ID).Scan(&status)
			if err != nil || status != "cancelled" {
				return fmt.Errorf("payment %q (%v)", status, err)
			}
			return nil
		})
		gatewayConfig(t, `{"fail_rate": 0}`)
		wantLedger(t, db, []string{o.ID}, 30*time.Second, never, nil)
	})
}

// gatewayStats reads the fake provider's counters.
func gatewayStats(t testing.TB) (s struct {
	InjectedFailures int `json:"injected_failures"`
}) {
	t.Helper()
	if err := getJSON(base(ports.Gateway)+"/v1/admin/stats", &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDeclinedCardFailsThePayment: a card the provider declines is
// order.payment_failed (the order is payment_failed, the customer is told),
// never a dead letter that leaves the order placed.
func TestDeclinedCardFailsThePayment(t *testing.T) {
	db := mustDB(t)
	gatewayConfig(t, fmt.Sprintf(`{"decline_amount_cents": %d}`, declinePrice))
	defer gatewayConfig(t, `{"decline_amount_cents": 0}`)
	o, _ := customerOrder(t, "r-money", declinePrice)
	wantLedger(t, db, []string{o.ID}, 30*time.Second, func(string) []effects { return []effects{declined} }, nil)
}

// TestZeroTotalRefused: an order the menu prices at nothing (free dishes
// only) is refused at the API, 422 naming items: it never waits for a
// payment that cannot come. A free dish in a paid order is fine.
func TestZeroTotalRefused(t *testing.T) {
	db := mustDB(t)
	customer := "c-zero-" + uuid.NewString()
	free := orderJSON(customer, "r-money", 0)
	mustMenu(t, free)
	h := bearer(as(t, token.AudienceCustomer, customer))
	h["Idempotency-Key"] = newKey()
	code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders", h, free)
	var p struct{ Field string }
	if err := json.Unmarshal(b, &p); code != http.StatusUnprocessableEntity || err != nil || p.Field != "items" {
		t.Fatalf("a zero-total order = %d %s, want 422 naming items", code, b)
	}
	var n int
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM orders WHERE customer_id = $1", customer).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d orders stored for a refused request (%v)", n, err)
	}
	paid := orderJSON(customer, "r-money", 1800)
	mustMenu(t, paid)
	var mixed map[string]any
	_ = json.Unmarshal([]byte(paid), &mixed)
	mixed["items"] = []map[string]any{{"sku": dish(0), "quantity": 2}, {"sku": dish(1800), "quantity": 1}}
	body, _ := json.Marshal(mixed)
	o := placeOrder(t, newKey(), string(body))
	if o.TotalCents != 1800 {
		t.Fatalf("total %d, want 1800", o.TotalCents)
	}
	wantLedger(t, db, []string{o.ID}, 30*time.Second, allExactlyOnce, nil)
}

// TestStolenRider: a customer cannot assign its order a rider (only an
// operator can), so it cannot follow a rider of its choice; and an order's
// own tracking link follows its rider only from picked_up to delivered.
func TestStolenRider(t *testing.T) {
	db := mustDB(t)
	tracking := base(ports.Tracking)
	theirs, _ := customerOrder(t, "r-stolen", 1900)
	r := &rider{ID: "rider-" + uuid.NewString()[:8]}
	r.Token = as(t, token.AudienceRider, r.ID)
	assignRider(t, theirs.ID, r.ID)
	mine, myTok := customerOrder(t, "r-stolen", 1900)
	for _, id := range []string{mine.ID, theirs.ID} {
		code, _, b := do(t, http.MethodPost, base(ports.Orders)+"/v1/orders/"+id+"/rider", bearer(myTok), `{"rider_id":"`+r.ID+`"}`)
		if code != http.StatusForbidden {
			t.Fatalf("a customer assigning a rider = %d %s, want 403", code, b)
		}
	}
	// The thief watches its own order; the rider's order is watched by its
	// customer's link.
	thief := openTrack(t, tracking, mine.ID, mine.TrackingToken)
	owner := openTrack(t, tracking, theirs.ID, theirs.TrackingToken)
	waitPaid(t, 20*time.Second, theirs.ID)
	// Assigned, paid, not picked up: nobody sees where the rider is.
	for range 3 {
		r.next(t, tracking)
	}
	if m, ok := owner.nextLocation(2 * time.Second); ok {
		t.Fatalf("before the pick-up the customer saw the rider: %+v", m)
	}
	if code := move(t, as(t, token.AudienceRestaurant, "r-stolen"), theirs.ID, "accepted"); code != http.StatusOK {
		t.Fatalf("accept = %d", code)
	}
	if code := move(t, r.Token, theirs.ID, "picked_up"); code != http.StatusOK {
		t.Fatalf("pick up = %d", code)
	}
	mustFirstFix(t, owner, tracking, r)
	if code := move(t, r.Token, theirs.ID, "delivered"); code != http.StatusOK {
		t.Fatalf("deliver = %d", code)
	}
	eventually(t, 10*time.Second, "delivered on the owner's socket", func() error {
		for {
			select {
			case m := <-owner.msgs:
				if m.Type == "status" && m.Status == "delivered" {
					return nil
				}
			default:
				return fmt.Errorf("not yet")
			}
		}
	})
	r.next(t, tracking)
	if m, ok := owner.nextLocation(2 * time.Second); ok {
		t.Fatalf("after the delivery the customer still saw the rider: %+v", m)
	}
	if m, ok := thief.nextLocation(time.Second); ok {
		t.Fatalf("the thief saw a rider: %+v", m)
	}
	mineLedger := exactlyOnce
	theirsLedger := exactlyOnce
	theirsLedger.Status, theirsLedger.Riders = "delivered", 1
	wantLedger(t, db, []string{mine.ID, theirs.ID}, 30*time.Second, func(id string) []effects {
		if id == theirs.ID {
			return []effects{theirsLedger}
		}
		return []effects{mineLedger}
	}, nil)
}
