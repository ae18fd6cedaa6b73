// A minimal messplus client in Go: route a prompt, generate through Triton, send feedback, read the SLA.
//
// The stubs are generated from the project's .proto into ./messplusv1 (protoc with protoc-gen-go and
// protoc-gen-go-grpc on PATH); the .proto sets no go_package, so the M options map it to this module. The
// -I path is the repository's protos/ folder: change it when you copy this example elsewhere.
//
//	go generate && go mod tidy && go run . [127.0.0.1:50051]
//
//go:generate protoc -I ../../protos --go_out=. --go_opt=module=example.com/messplus-client --go_opt=Mmessplus/v1/routing.proto=example.com/messplus-client/messplusv1 --go-grpc_out=. --go-grpc_opt=module=example.com/messplus-client --go-grpc_opt=Mmessplus/v1/routing.proto=example.com/messplus-client/messplusv1 messplus/v1/routing.proto
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "example.com/messplus-client/messplusv1"
)

func main() {
	address := "127.0.0.1:50051"
	if len(os.Args) > 1 {
		address = os.Args[1]
	}
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	router := pb.NewRoutingServiceClient(conn)

	// 1. Route only: which model should answer? (You then call Triton yourself.)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	route, err := router.Route(ctx, &pb.RouteRequest{
		Tenant: "default", Prompt: &pb.RouteRequest_Text{Text: "Which gas do plants absorb from the air?"}})
	if err != nil {
		log.Fatalf("Route: %s", status.Convert(err).Message()) // status.Code(err): codes.InvalidArgument, ...
	}
	fmt.Printf("Route    -> %s (exploration=%t, queue=%.3f)\n", route.GetModel(), route.GetExploration(), route.GetQueue())

	// 2. Generate: route, call the chosen model on Triton, stream the answer back.
	genCtx, genCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer genCancel()
	stream, err := router.Generate(genCtx, &pb.GenerateRequest{
		Tenant: "default", Prompt: &pb.GenerateRequest_Text{Text: "Write a haiku about routers."}})
	if err != nil {
		log.Fatalf("Generate: %v", err)
	}
	requestID := ""
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			break
		} else if err != nil {
			log.Fatalf("Generate: %s", status.Convert(err).Message())
		}
		switch event := reply.GetEvent().(type) {
		case *pb.GenerateReply_Route:
			requestID = event.Route.GetRequestId()
			fmt.Printf("Generate -> routed to %s\n", event.Route.GetModel())
		case *pb.GenerateReply_Text:
			fmt.Printf("           text: %q\n", event.Text)
		case *pb.GenerateReply_Answer: // exploration: another model's answer, to be labelled too
			fmt.Printf("           also: %s: %q\n", event.Answer.GetModel(), event.Answer.GetText())
		case *pb.GenerateReply_Done:
			fmt.Printf("           done: served by %s, cost %.6f\n", event.Done.GetServedModel(), event.Done.GetCostRaw())
		}
	}

	// 3. Feedback: how satisfied was the user with the served answer? (0..1; idempotent per request)
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fb, err := router.Feedback(ctx, &pb.FeedbackRequest{
		Tenant: "default", RequestId: requestID, Satisfaction: proto.Float64(1.0)})
	if err != nil {
		log.Fatalf("Feedback: %s", status.Convert(err).Message())
	}
	fmt.Printf("Feedback -> applied=%d queue=%.3f\n", fb.GetLabelsApplied(), fb.GetQueue())

	// 4. The SLA as the router sees it.
	sla, err := router.SlaStatus(ctx, &pb.SlaStatusRequest{Tenant: "default"})
	if err != nil {
		log.Fatalf("SlaStatus: %s", status.Convert(err).Message())
	}
	fmt.Printf("SlaStatus-> alpha=%g satisfaction=%.3f requests=%d mean_cost=%.6f",
		sla.GetAlpha(), sla.GetSatisfaction(), sla.GetRequests(), sla.GetMeanCostRaw())
	for _, m := range sla.GetModels() {
		fmt.Printf(" %s:%d", m.GetModel(), m.GetServed())
	}
	fmt.Println()
}
