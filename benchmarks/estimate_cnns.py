"""Shape-faithful ONNX graphs of the published CNNs: ResNet-50 v1.5, RetinaNet (MLPerf), YOLOv8 n/s/m.

BatchNorm is folded into the convolutions (what an export for TensorRT contains); every conv reads its
input through Q/DQ when `prec` is int8. Layer definitions: torchvision ResNet-50 / ResNeXt50-32x4d + FPN
RetinaNet heads (MLPerf: 800x800, 264 OpenImages classes, 9 anchors), Ultralytics yolov8.yaml (see
benchmarks/published/README.md).
"""

from __future__ import annotations

from estimate_graphs import Builder
from onnx import TensorProto, helper


def _bottleneck(
    g: Builder, x: str, c_in: int, width: int, c_out: int, stride: int, groups: int, prec: str
) -> str:
    y = g.conv(x, c_in, width, 1, prec=prec)
    y = g.conv(y, width, width, 3, stride, groups, prec=prec)  # v1.5: the stride is in the 3x3 conv
    y = g.conv(y, width, c_out, 1, prec=prec, act=None)
    skip = g.conv(x, c_in, c_out, 1, stride, prec=prec, act=None) if stride != 1 or c_in != c_out else x
    return g.op("Relu", [g.op("Add", [y, skip])])


def _resnet_body(g: Builder, x: str, prec: str, groups: int = 1, base: int = 64) -> list[str]:
    """Stem + 4 stages (3/4/6/3 bottlenecks); returns the C2..C5 feature maps."""
    x = g.conv(x, 3, 64, 7, 2, prec=prec)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in, feats = 64, []
    for i, n in enumerate((3, 4, 6, 3)):
        width, c_out = (base * groups if groups > 1 else 64) * 2**i, 256 * 2**i
        for j in range(n):
            x = _bottleneck(g, x, c_in, width, c_out, 2 if j == 0 and i > 0 else 1, groups, prec)
            c_in = c_out
        feats.append(x)
    return feats


def resnet50(prec: str = "int8"):
    g = Builder()
    c5 = _resnet_body(g, g.graph_input("image", [1, 3, 224, 224]), prec)[-1]
    pooled = g.reshape(g.op("GlobalAveragePool", [c5]), [1, 2048])
    return g.model(g.linear(pooled, 2048, 1000, prec, bias=True))


def retinanet(prec: str = "int8", classes: int = 264, anchors: int = 9):
    """ResNeXt50-32x4d + FPN (P3-P7, 256 channels) + the shared 4-conv class and box heads per level."""
    g = Builder()
    _, c3, c4, c5 = _resnet_body(g, g.graph_input("image", [1, 3, 800, 800]), prec, groups=32, base=4)
    lat5 = g.conv(c5, 2048, 256, 1, prec=prec, act=None)
    lat4 = g.op("Add", [g.conv(c4, 1024, 256, 1, prec=prec, act=None), _up(g, lat5)])
    lat3 = g.op("Add", [g.conv(c3, 512, 256, 1, prec=prec, act=None), _up(g, lat4)])
    p3, p4, p5 = (g.conv(t, 256, 256, 3, prec=prec, act=None) for t in (lat3, lat4, lat5))
    p6 = g.conv(c5, 2048, 256, 3, 2, prec=prec, act=None)
    p7 = g.conv(g.op("Relu", [p6]), 256, 256, 3, 2, prec=prec, act=None)
    outs = []
    for p in (p3, p4, p5, p6, p7):
        for n_out in (anchors * classes, anchors * 4):
            y = p
            for _ in range(4):
                y = g.conv(y, 256, 256, 3, prec=prec)
            outs.append(g.reshape(g.conv(y, 256, n_out, 3, prec=prec, act=None), [1, -1]))
    return g.model(g.op("Concat", outs, axis=1))


def _up(g: Builder, x: str) -> str:
    """Nearest 2x upsampling."""
    g.n += 1
    g.inits.append(helper.make_tensor(f"scales{g.n}", TensorProto.FLOAT, [4], [1, 1, 2, 2]))
    return g.op("Resize", [x, "", f"scales{g.n}"], mode="nearest")


YOLO_SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768)}


def yolov8(scale: str, prec: str = "fp16", side: int = 640, classes: int = 80):
    """yolov8.yaml backbone (Conv, C2f, SPPF), PAN head and the decoupled Detect head (DFL reg_max 16)."""
    depth, width, max_ch = YOLO_SCALES[scale]
    ch = [min(int(c * width), max_ch) for c in (64, 128, 256, 512, 1024)]
    n = [max(round(r * depth), 1) for r in (3, 6, 6, 3)]
    g = Builder()

    def conv(x, c1, c2, k=1, s=1):
        return g.conv(x, c1, c2, k, s, prec=prec, act="SiLU")

    def c2f(x, c1, c2, reps, shortcut):
        c = c2 // 2
        y = conv(x, c1, 2 * c)
        halves = [f"{y}_a", f"{y}_b"]
        g.nodes.append(helper.make_node("Split", [y], halves, axis=1, num_outputs=2))
        parts = list(halves)
        for _ in range(reps):
            z = conv(conv(parts[-1], c, c, 3), c, c, 3)
            parts.append(g.op("Add", [parts[-1], z]) if shortcut else z)
        return conv(g.op("Concat", parts, axis=1), (2 + reps) * c, c2)

    x = conv(reformat(g, g.graph_input("image", [1, 3, side, side]), prec), 3, ch[0], 3, 2)
    x = c2f(conv(x, ch[0], ch[1], 3, 2), ch[1], ch[1], n[0], True)
    p3 = c2f(conv(x, ch[1], ch[2], 3, 2), ch[2], ch[2], n[1], True)
    p4 = c2f(conv(p3, ch[2], ch[3], 3, 2), ch[3], ch[3], n[2], True)
    x = c2f(conv(p4, ch[3], ch[4], 3, 2), ch[4], ch[4], n[3], True)
    y = conv(x, ch[4], ch[4] // 2)  # SPPF
    pools = [y]
    for _ in range(3):
        pools.append(g.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2]))
    p5 = conv(g.op("Concat", pools, axis=1), ch[4] * 2, ch[4])
    h4 = c2f(g.op("Concat", [_up(g, p5), p4], axis=1), ch[4] + ch[3], ch[3], n[3], False)
    h3 = c2f(g.op("Concat", [_up(g, h4), p3], axis=1), ch[3] + ch[2], ch[2], n[3], False)
    o4 = c2f(g.op("Concat", [conv(h3, ch[2], ch[2], 3, 2), h4], axis=1), ch[2] + ch[3], ch[3], n[3], False)
    o5 = c2f(g.op("Concat", [conv(o4, ch[3], ch[3], 3, 2), p5], axis=1), ch[3] + ch[4], ch[4], n[3], False)
    c2, c3 = max(16, ch[2] // 4, 64), max(ch[2], min(classes, 100))
    outs = []
    for f, c in ((h3, ch[2]), (o4, ch[3]), (o5, ch[4])):
        box = g.conv(conv(conv(f, c, c2, 3), c2, c2, 3), c2, 64, 1, prec=prec, act=None)
        cls = g.conv(conv(conv(f, c, c3, 3), c3, c3, 3), c3, classes, 1, prec=prec, act=None)
        outs.append(g.reshape(g.op("Concat", [box, cls], axis=1), [1, 64 + classes, -1]))
    return g.model(_decode(g, g.op("Concat", outs, axis=2), classes, (side // 8) ** 2 * 21 // 16))


def reformat(g: Builder, image: str, prec: str) -> str:
    """The reformat TensorRT inserts after an FP32 linear (NCHW) engine input, trtexec's default I/O format:
    3 channels padded to the vector width of the first conv's format (8 for FP16 kHWC8, 32 for INT8 kCHW32;
    https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html#i-o-formats). The
    'Reformatting CopyNode' kernels show in hokwangchoi's Nsight timeline of these engines."""
    width = 32 if prec == "int8" else 8
    g.n += 1
    g.inits.append(helper.make_tensor(f"pads{g.n}", TensorProto.INT64, [8], [0, 0, 0, 0, 0, width - 3, 0, 0]))
    return g.op("Pad", [image, f"pads{g.n}"])


def _decode(g: Builder, x: str, classes: int, anchors: int) -> str:
    """Ultralytics' exported Detect tail (in the engine, NMS outside): DFL softmax over 16 bins per box side,
    the 1x1 DFL conv, distance -> box with the anchor grid and strides, sigmoid of the class scores."""
    box, cls = f"{x}_box", f"{x}_cls"
    g.inits.append(helper.make_tensor(f"split{g.n}", TensorProto.INT64, [2], [64, classes]))
    g.nodes.append(helper.make_node("Split", [x, f"split{g.n}"], [box, cls], axis=1))
    bins = g.op("Transpose", [g.reshape(box, [1, 4, 16, anchors])], perm=[0, 2, 1, 3])
    bins = g.op("Softmax", [bins], axis=1)
    dist = g.reshape(g.conv(bins, 16, 1, 1, act=None), [1, 4, anchors])
    grid, stride = g.weight([1, 4, anchors]), g.weight([1, 1, anchors])
    boxes = g.op("Mul", [g.op("Add", [dist, grid]), stride])
    return g.op("Concat", [boxes, g.op("Sigmoid", [cls])], axis=1)
