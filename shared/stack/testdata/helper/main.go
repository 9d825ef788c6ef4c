// Command helper stands in for a Dabba service in package stack's tests:
// it serves /readyz on HTTP_ADDR and behaves as HELPER_MODE says.
//
//	ready      answers 200 and exits 0 on SIGTERM (the default)
//	notready   answers 503 with a reason, as a service without its broker
//	exit       writes a reason to stderr and exits 3 at once
//	stubborn   answers 200 but ignores SIGTERM, as a hung drain
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	mode := os.Getenv("HELPER_MODE")
	if mode == "exit" {
		fmt.Fprintln(os.Stderr, "helper: cannot open database: boom")
		os.Exit(3)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
	}
	ln, err := net.Listen("tcp", os.Getenv("HTTP_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	http.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if mode == "notready" {
			http.Error(w, "broker: not connected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	go func() { _ = http.Serve(ln, nil) }()
	fmt.Printf("listening on %s, greeting %q\n", ln.Addr(), os.Getenv("HELPER_GREETING"))
	<-ctx.Done()
	fmt.Println("got SIGTERM, draining")
	ln.Close()
}
