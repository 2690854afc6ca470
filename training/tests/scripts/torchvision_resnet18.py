"""torchvision's resnet18, rebuilt by hand (torchvision is not installed in the venv).

The module tree mirrors torchvision.models.resnet (BasicBlock, ResNet with layer1..layer4, fc),
so `state_dict()` has exactly torchvision's keys and shapes. Used by the hashsrv-train tests:

  torchvision_resnet18.py keys                 -> JSON {key: shape} of the state dict, in order
  torchvision_resnet18.py save OUT.pth OUT.safetensors REF
      random weights and batch-norm statistics, written by torch.save (the format of
      resnet18-f37072fd.pth), by a hand-written safetensors writer, and as the reference:
      REF.json = [[key, shape], ...] of the float tensors, REF.bin = their float32 values (LE).
  torchvision_resnet18.py features IN.pth N SIZE OUT
      loads IN.pth, runs the eval-mode trunk on a seeded random batch [N,3,SIZE,SIZE]:
      OUT.input.bin and OUT.features.bin (float32 LE).
  torchvision_resnet18.py save_legacy OUT.pth    -> a tiny state dict in the pre-1.6 format
  torchvision_resnet18.py save_views OUT.pth
      a state dict of views sharing one storage (transposed, offset, strided) and other dtypes;
      prints JSON {key: [shape, dtype, flat values]}.
"""

import collections
import json
import struct
import sys

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, c_out in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)

    def features(self, x):
        """torchvision's forward up to the pooled, flattened trunk output (before fc)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def random_state_dict(seed=7):
    """The module's own state dict (an OrderedDict with `_metadata`, like the real checkpoint)."""
    torch.manual_seed(seed)
    sd = ResNet18().state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            # Scales that keep activations O(1), so forward comparisons are meaningful.
            if k.endswith("num_batches_tracked"):
                v.fill_(1234)
            elif k.endswith("running_var"):
                v.copy_(torch.rand(v.shape) + 0.5)
            elif v.dim() == 4:
                v.copy_(torch.randn(v.shape) * (2.0 / v[0].numel()) ** 0.5)
            elif k.startswith("bn") or ".bn" in k or "downsample.1" in k:
                v.copy_(torch.rand(v.shape) + 0.5 if k.endswith("weight") else torch.randn(v.shape) * 0.1)
            else:
                v.copy_(torch.randn(v.shape) * 0.05)
    return sd


def write_safetensors(path, tensors):
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for k, v in tensors.items():
        data = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": dtypes[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    if sys.argv[1] == "keys":
        sd = ResNet18().state_dict()
        print(json.dumps({k: list(v.shape) for k, v in sd.items()}))
    elif sys.argv[1] == "save":
        pth, st, ref = sys.argv[2:5]
        sd = random_state_dict()
        torch.save(sd, pth)
        write_safetensors(st, sd)
        floats = [(k, v) for k, v in sd.items() if v.dtype == torch.float32]
        with open(ref + ".json", "w") as f:
            json.dump([[k, list(v.shape)] for k, v in floats], f)
        with open(ref + ".bin", "wb") as f:
            for _, v in floats:
                f.write(v.numpy().astype("<f4").tobytes())
    elif sys.argv[1] == "features":
        pth, n, size, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        model = ResNet18()
        model.load_state_dict(torch.load(pth))
        model.eval()
        torch.manual_seed(11)
        x = torch.randn(n, 3, size, size)
        with torch.no_grad():
            y = model.features(x)
        with open(out + ".input.bin", "wb") as f:
            f.write(x.numpy().astype("<f4").tobytes())
        with open(out + ".features.bin", "wb") as f:
            f.write(y.numpy().astype("<f4").tobytes())
    elif sys.argv[1] == "save_legacy":
        torch.save({"x": torch.zeros(2)}, sys.argv[2], _use_new_zipfile_serialization=False)
    elif sys.argv[1] == "save_views":
        base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
        views = {
            "whole": base,
            "transposed": base.t(),
            "offset_rows": base[1:3],
            "strided_cols": base[:, 1::2],
            "half": base[2].half(),
            "double": base[0].double(),
            "long": torch.tensor([-(2**40), 3, 0], dtype=torch.long),
            "scalar": torch.tensor(7.25),
        }
        torch.save(collections.OrderedDict(views), sys.argv[2])
        print(json.dumps({k: [list(v.shape), str(v.dtype), v.flatten().tolist()] for k, v in views.items()}))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
