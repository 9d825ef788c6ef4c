package main

import (
	"bytes"
	"embed"
	"fmt"
	"math"
	"text/template"

	"github.com/dabba/dabba/shared/events"
)

// templateFS holds one template file per event type, each defining
// "subject" and "body".
//
//go:embed templates/*.tmpl
var templateFS embed.FS

// mailData is what a template sees; only the field of the event's type is
// filled.
type mailData struct {
	OrderID  string
	Short    string // the order id as customers see it (events.ShortID)
	Placed   events.Placed
	Paid     events.Paid
	Failed   events.PaymentFailed
	Status   events.StatusChanged
	Refunded events.Refunded
	Near     events.RiderNear
}

// Renderer renders the text e-mail for an event.
type Renderer struct {
	byKind map[string]*template.Template
}

// NewRenderer parses the embedded templates.
func NewRenderer() (*Renderer, error) {
	funcs := template.FuncMap{
		"money":     money,
		"lineTotal": func(it events.Item) string { return money(int64(it.Quantity) * it.UnitPriceCents) },
		"meters":    meters,
	}
	r := &Renderer{byKind: map[string]*template.Template{}}
	// The event types customers hear about: the email queue's bindings.
	for _, kind := range []string{events.OrderPlaced, events.OrderPaid, events.OrderPaymentFailed, events.OrderDelivered,
		events.OrderCancelled, events.OrderRefunded, events.OrderRiderNear} {
		t, err := template.New(kind).Funcs(funcs).Option("missingkey=error").ParseFS(templateFS, "templates/"+kind+".tmpl")
		if err != nil {
			return nil, fmt.Errorf("parse %s template: %w", kind, err)
		}
		r.byKind[kind] = t
	}
	return r, nil
}

// Render returns the subject and body of the e-mail for kind.
func (r *Renderer) Render(kind string, data mailData) (subject, body string, err error) {
	t, ok := r.byKind[kind]
	if !ok {
		return "", "", fmt.Errorf("no e-mail template for %s", kind)
	}
	var s, b bytes.Buffer
	if err := t.ExecuteTemplate(&s, "subject", data); err != nil {
		return "", "", fmt.Errorf("render %s subject: %w", kind, err)
	}
	if err := t.ExecuteTemplate(&b, "body", data); err != nil {
		return "", "", fmt.Errorf("render %s body: %w", kind, err)
	}
	return s.String(), b.String(), nil
}

// money formats an amount in paise as rupees. ASCII on purpose: subjects
// and bodies then need no transfer encoding.
func money(cents int64) string {
	sign := ""
	if cents < 0 {
		sign, cents = "-", -cents
	}
	return fmt.Sprintf("%sINR %d.%02d", sign, cents/100, cents%100)
}

// meters writes a distance as a customer reads it: "250 m", rounded to
// tens of metres (a GPS fix is no more precise).
func meters(m float64) string {
	return fmt.Sprintf("%d m", int(math.Round(m/10))*10)
}
