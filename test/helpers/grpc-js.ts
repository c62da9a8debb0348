/**
 * A @grpc/grpc-js client for any of our services, built from the
 * protobuf-es descriptors: grpc-js needs a codec around toBinary/fromBinary.
 */

import { type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

/** A grpc-js method: (request or callback, …) → call. */
// biome-ignore lint/suspicious/noExplicitAny: grpc-js methods are untyped in a generic client
type GrpcMethod = (...args: any[]) => any;

/** A grpc-js client whose methods are named like the proto's (lowerCamelCase). */
export function grpcJsClient(
  service: DescService,
  baseUrl: string,
): grpc.Client & Record<string, GrpcMethod> {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    definition[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      // biome-ignore lint/suspicious/noExplicitAny: the codec is generic over the method's message
      requestSerialize: (msg: any) => Buffer.from(toBinary(m.input, msg)),
      requestDeserialize: (buf: Buffer) => fromBinary(m.input, buf),
      // biome-ignore lint/suspicious/noExplicitAny: as above
      responseSerialize: (msg: any) => Buffer.from(toBinary(m.output, msg)),
      responseDeserialize: (buf: Buffer) => fromBinary(m.output, buf),
      originalName: m.localName,
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(
    definition as grpc.ServiceDefinition,
    service.typeName,
  );
  const target = baseUrl.replace(/^https?:\/\//, "");
  return new Ctor(target, grpc.credentials.createInsecure()) as unknown as grpc.Client &
    Record<string, GrpcMethod>;
}

/** Calls a unary grpc-js method as a promise. */
export function unary<Res>(
  client: grpc.Client & Record<string, GrpcMethod>,
  method: string,
  req: unknown,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    client[method]!.call(client, req, (err: grpc.ServiceError | null, res: Res) =>
      err ? reject(err) : resolve(res),
    );
  });
}
