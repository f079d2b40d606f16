package xds

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// ServerCodec is the gRPC server option every grpc.Server that the xDS
// Server is registered on must be created with. It lets a stream send a
// response whose body was encoded once for every stream at the same cursor
// (preEncoded), and encodes every other message as the standard protobuf
// codec does.
func ServerCodec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(sharedCodec{fallback: encoding.GetCodecV2(proto.Name)})
}

// preEncoded is a DeltaDiscoveryResponse already in wire form: shared is the
// response without its nonce, the same bytes for every stream that receives
// it; nonce is this stream's nonce field. Protobuf allows fields in any
// order, so their concatenation is the complete message.
type preEncoded struct {
	shared []byte
	nonce  []byte
}

func newPreEncoded(shared []byte, nonce string) *preEncoded {
	const nonceField = 5 // DeltaDiscoveryResponse.nonce
	b := protowire.AppendTag(nil, nonceField, protowire.BytesType)
	return &preEncoded{shared: shared, nonce: protowire.AppendString(b, nonce)}
}

type sharedCodec struct{ fallback encoding.CodecV2 }

// Marshal hands gRPC the shared bytes without copying them; gRPC only reads
// them, and a SliceBuffer's Free does nothing, so one slice serves every
// stream at once.
func (c sharedCodec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok {
		return mem.BufferSlice{mem.SliceBuffer(p.shared), mem.SliceBuffer(p.nonce)}, nil
	}
	return c.fallback.Marshal(v)
}

func (c sharedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return c.fallback.Unmarshal(data, v)
}

// Name is the standard codec's: the content type on the wire is unchanged.
func (sharedCodec) Name() string { return proto.Name }
