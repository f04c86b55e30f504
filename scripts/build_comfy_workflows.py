"""Write the drag-and-drop ComfyUI workflows in workflows/ (UI format) from compact graph descriptions.

Run from the repository root: ``python scripts/build_comfy_workflows.py``. The output is committed;
tests/comfy/test_comfy_workflows.py checks it against the node definitions independently of this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_nodes.extension import NODES  # noqa: E402
from comfy_nodes.sources import DEMO_CHOICE  # noqa: E402

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
NODE_INFO = {info["name"]: info for info in (cls.GET_NODE_INFO_V1() for cls in NODES)}
"""The pack's nodes as ComfyUI reports them (``/object_info``), read from the node classes."""

# output types of the ComfyUI core nodes used here (inputs are listed per graph below)
CORE_OUTPUTS = {"SaveImage": [], "PreviewImage": [], "ImageScaleBy": ["IMAGE"], "ImageStitch": ["IMAGE"],
                "SaveVideo": [], "LoadImage": ["IMAGE", "MASK"], "LoadVideo": ["VIDEO"]}
CORE_SOCKETS = {"SaveImage": ["images"], "PreviewImage": ["images"], "ImageScaleBy": ["image"],
                "ImageStitch": ["image1", "image2"], "SaveVideo": ["video"], "LoadImage": [], "LoadVideo": []}
CORE_SOCKET_TYPES = {"images": "IMAGE", "image": "IMAGE", "image1": "IMAGE", "image2": "IMAGE", "video": "VIDEO"}

HF_VAR = "https://huggingface.co/FoundationVision/var/resolve/main/"
HF_INFINITY = "https://huggingface.co/FoundationVision/Infinity/resolve/main/"
HF_INFINITY_STAR = "https://huggingface.co/FoundationVision/InfinityStar/resolve/main/"
T5_FOLDER = "flan-t5-xl"
"""Where the docs tell users to put google/flan-t5-xl (models/text_encoders/flan-t5-xl)."""
AUTO_MEMORY = ["auto", "auto"]  # the loader's quantization and offload: planned against the free VRAM
AUTO_LOADER = [*AUTO_MEMORY, "auto"]  # quantization, offload and variant (InfinityStar: from the file name)
NO_FILES = ["none", "none", "fp32", *AUTO_LOADER]  # vae_file, text_encoder, dtype, quantization, offload, variant
TINY_INFINITY = "vpg-tiny-infinity/model_index.json"
TINY_INFINITY_STAR = "vpg-tiny-infinitystar/model_index.json"
"""Saved folders written by tests/comfy/make_standin_models.py (from the parity fixtures)."""
FASTVAR_TINY = '{"method": "fastvar", "blocks": [0, 2]}'
"""VPG Accelerate's ``config`` for the 2-block tiny Infinity: FastVAR's released rule, pruning both blocks."""
START_IMAGE = "example.png"
"""The picture every ComfyUI install has in its input folder (Load Image's default)."""
REFERENCE_VIDEO = "reference.mp4"
"""The video the continuation and Interact workflows load from ComfyUI's input folder (the user's own, >= 5 s)."""
UPLOAD = "image"
"""What the frontend saves for a Load Image / Load Video node's upload button (after the file's name)."""
INTERACT_PROMPTS = ("The man turns to the camera and smiles.\n"
                    "He picks up the guitar and starts to play.\n"
                    "He stops playing and waves goodbye.")


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, node_type: str, pos: tuple[int, int], widgets: list, title: str | None = None,
            size: tuple[int, int] = (320, 130), models: list[dict] | None = None) -> int:
        node_id = len(self.nodes) + 1
        if node_type in NODE_INFO:
            info = NODE_INFO[node_type]
            declared = {**info["input"]["required"], **info["input"].get("optional", {})}
            inputs = [{"name": name, "type": kind, "link": None} for name, (kind, _) in declared.items()
                      if kind not in WIDGET_TYPES]
            outputs = [{"name": name, "type": kind, "links": [], "slot_index": s}
                       for s, (kind, name) in enumerate(zip(info["output"], info["output_name"]))]
        else:
            inputs = [{"name": n, "type": CORE_SOCKET_TYPES[n], "link": None} for n in CORE_SOCKETS[node_type]]
            outputs = [{"name": t, "type": t, "links": [], "slot_index": s}
                       for s, t in enumerate(CORE_OUTPUTS[node_type])]
        node = {
            "id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": node_type}, "widgets_values": widgets,
        }
        if models:
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def link(self, src: int, src_slot: int, dst: int, dst_input: str) -> None:
        link_id = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        out = s["outputs"][src_slot]
        slot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == dst_input)
        out["links"].append(link_id)
        d["inputs"][slot]["link"] = link_id
        self.links.append([link_id, src, src_slot, dst, slot, out["type"]])

    def to_json(self) -> dict:
        for node in self.nodes:
            for out in node["outputs"]:
                if not out["links"]:
                    out["links"] = None
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
            "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }


def chain(g: Graph, loader_widgets: list, classes: str, cfg: float, vpg: list | None, sampler: list,
          y: int = 0, loader_models: list[dict] | None = None) -> tuple[int, int, int]:
    """Loader -> conditioning, Loader -> CFG [-> Prefix] -> Sampler; returns (loader, cfg node, sampler)."""
    loader = g.add("VPGModelLoader", (20, 40 + y), loader_widgets, size=(380, 180), models=loader_models)
    cond = g.add("VPGClassConditioning", (440, 250 + y), [classes], size=(320, 120))
    cfg_node = g.add("VPGCFG", (440, 40 + y), [cfg], size=(320, 60))
    g.link(loader, 0, cond, "model")
    g.link(loader, 0, cfg_node, "model")
    last = cfg_node
    if vpg is not None:
        prefix = g.add("VPGPrefixGuidance", (800, 40 + y), vpg, size=(320, 180))
        g.link(cfg_node, 0, prefix, "model")
        last = prefix
    samp = g.add("VPGSampler", (1160, 40 + y), sampler, size=(320, 200))
    g.link(last, 0, samp, "model")
    g.link(cond, 0, samp, "conditioning")
    return loader, cfg_node, samp


def demo_cfg_prefix() -> dict:
    g = Graph()
    _, _, samp = chain(g, [DEMO_CHOICE, *NO_FILES], "face-happy, animal-mammal, food-fruit-veg, transport",
                       3.0, [1.5, 0.5, "full", "persistent", "all"], [0, "fixed", 1, 0, 0.95])
    up = g.add("ImageScaleBy", (1520, 40), ["nearest-exact", 4.0], size=(300, 90))
    save = g.add("SaveImage", (1860, 40), ["vpg_demo"], size=(400, 300))
    gmap = g.add("VPGGuidanceMap", (1520, 400), ["per scale", 128], size=(300, 110))
    save_map = g.add("SaveImage", (1860, 400), ["vpg_demo_guidance_map"], size=(600, 300))
    g.link(samp, 0, up, "image")
    g.link(up, 0, save, "images")
    g.link(samp, 1, gmap, "guidance")
    g.link(gmap, 0, save_map, "images")
    return g.to_json()


def demo_side_by_side() -> dict:
    """Two samplers, same seed and settings; the second one's model has Prefix Guidance."""
    g = Graph()
    loader, cfg_node, plain = chain(g, [DEMO_CHOICE, *NO_FILES], "face-happy, animal-mammal, transport",
                                    3.0, None, [7, "fixed", 1, 0, 0.95])
    cond = 2
    prefix = g.add("VPGPrefixGuidance", (800, 420), [1.5, 0.5, "full", "persistent", "all"], size=(320, 180))
    guided = g.add("VPGSampler", (1160, 420), [7, "fixed", 1, 0, 0.95], title="VPG Sampler (with VPG)",
                   size=(320, 200))
    g.nodes[plain - 1]["title"] = "VPG Sampler (without VPG)"
    g.link(cfg_node, 0, prefix, "model")
    g.link(prefix, 0, guided, "model")
    g.link(cond, 0, guided, "conditioning")
    up_a = g.add("ImageScaleBy", (1520, 40), ["nearest-exact", 4.0], size=(300, 90))
    up_b = g.add("ImageScaleBy", (1520, 420), ["nearest-exact", 4.0], size=(300, 90))
    stitch = g.add("ImageStitch", (1860, 200), ["right", True, 8, "white"], size=(300, 160))
    save = g.add("SaveImage", (2200, 200), ["vpg_side_by_side"], size=(400, 300))
    g.link(plain, 0, up_a, "image")
    g.link(guided, 0, up_b, "image")
    g.link(up_a, 0, stitch, "image1")
    g.link(up_b, 0, stitch, "image2")
    g.link(stitch, 0, save, "images")
    return g.to_json()


def demo_guidance_stack() -> dict:
    """CFG -> IGG -> Prefix Guidance -> SSG on the bundled model (issue 14): the chain acts in that order."""
    g = Graph()
    loader = g.add("VPGModelLoader", (20, 40), [DEMO_CHOICE, *NO_FILES], size=(380, 180))
    cond = g.add("VPGClassConditioning", (440, 300), ["face-happy, animal-mammal, food-fruit-veg, transport"],
                 size=(320, 120))
    cfg_node = g.add("VPGCFG", (440, 40), [3.0], size=(320, 60))
    igg = g.add("VPGIGG", (800, 40), [0.5, "linear", 0.0, 1.0], size=(320, 150))
    prefix = g.add("VPGPrefixGuidance", (1160, 40), [1.5, 0.5, "full", "persistent", "all"], size=(320, 180))
    ssg = g.add("VPGSSG", (1520, 40), [0.25, "linear", 0.0, 1.0], size=(320, 150))
    samp = g.add("VPGSampler", (1880, 40), [0, "fixed", 1, 0, 0.95], size=(320, 200))
    for src, dst in ((loader, cond), (loader, cfg_node), (cfg_node, igg), (igg, prefix), (prefix, ssg), (ssg, samp)):
        g.link(src, 0, dst, "model")
    g.link(cond, 0, samp, "conditioning")
    up = g.add("ImageScaleBy", (2240, 40), ["nearest-exact", 4.0], size=(300, 90))
    save = g.add("SaveImage", (2580, 40), ["vpg_demo_guidance_stack"], size=(400, 300))
    gmap = g.add("VPGGuidanceMap", (2240, 400), ["per scale", 128], size=(300, 110))
    save_map = g.add("SaveImage", (2580, 400), ["vpg_demo_guidance_stack_map"], size=(600, 300))
    g.link(samp, 0, up, "image")
    g.link(up, 0, save, "images")
    g.link(samp, 1, gmap, "guidance")
    g.link(gmap, 0, save_map, "images")
    return g.to_json()


def var_d16() -> dict:
    """The released VAR-d16 with the paper's VPG setting (w=3.0, p=0.5); needs the two official files."""
    models = [
        {"name": "var_d16.pth", "url": HF_VAR + "var_d16.pth", "directory": "vpg"},
        {"name": "vae_ch160v4096z32.pth", "url": HF_VAR + "vae_ch160v4096z32.pth", "directory": "vpg"},
    ]
    g = Graph()
    _, _, samp = chain(g, ["var_d16.pth", "vae_ch160v4096z32.pth", "none", "fp32", *AUTO_LOADER],
                       "golden retriever, 980, volcano",
                       1.5, [3.0, 0.5, "full", "persistent", "all"], [0, "fixed", 1, 900, 0.96],
                       loader_models=models)
    save = g.add("SaveImage", (1520, 40), ["vpg_var_d16"], size=(400, 300))
    gmap = g.add("VPGGuidanceMap", (1520, 400), ["per scale", 128], size=(300, 110))
    save_map = g.add("SaveImage", (1860, 400), ["vpg_var_d16_guidance_map"], size=(600, 300))
    g.link(samp, 0, save, "images")
    g.link(samp, 1, gmap, "guidance")
    g.link(gmap, 0, save_map, "images")
    return g.to_json()


def text_chain(g: Graph, loader_widgets: list, prompt: str, guidance: tuple[str, list], vpg: list,
               sampler_type: str, sampler: list, loader_models: list[dict] | None = None,
               accelerate: list | None = None) -> int:
    """Loader -> Text Encode, Loader -> CFG/APG -> Prefix [-> Accelerate] -> sampler; returns the sampler."""
    loader = g.add("VPGModelLoader", (20, 40), loader_widgets, size=(380, 210), models=loader_models)
    enc = g.add("VPGTextEncode", (440, 300), [prompt, ""], size=(360, 200))
    cfg_node = g.add(guidance[0], (440, 40), guidance[1], size=(320, 90))
    prefix = g.add("VPGPrefixGuidance", (840, 40), vpg, size=(320, 180))
    g.link(loader, 0, enc, "model")
    g.link(loader, 0, cfg_node, "model")
    g.link(cfg_node, 0, prefix, "model")
    last, x = prefix, 1200
    if accelerate is not None:
        last = g.add("VPGAccelerate", (x, 40), accelerate, size=(340, 200))
        g.link(prefix, 0, last, "model")
        x += 380
    samp = g.add(sampler_type, (x, 40), sampler, size=(340, 280))
    g.link(last, 0, samp, "model")
    g.link(enc, 0, samp, "conditioning")
    return samp


def _image_outputs(g: Graph, samp: int, prefix: str, upscale: float | None = None, x: int = 1580) -> None:
    source, slot = samp, 0
    if upscale:
        up = g.add("ImageScaleBy", (x, 40), ["nearest-exact", upscale], size=(300, 90))
        g.link(samp, 0, up, "image")
        source = up
    save = g.add("SaveImage", (x + 340 if upscale else x, 40), [prefix], size=(400, 300))
    g.link(source, slot, save, "images")
    gmap = g.add("VPGGuidanceMap", (x, 420), ["per scale", 128], size=(300, 110))
    save_map = g.add("SaveImage", (x + 340, 420), [prefix + "_guidance_map"], size=(600, 300))
    g.link(samp, 1, gmap, "guidance")
    g.link(gmap, 0, save_map, "images")


def _video_outputs(g: Graph, samp: int, prefix: str) -> None:
    save_video = g.add("SaveVideo", (1580, 40), ["video/" + prefix, *AUTO_MEMORY], size=(400, 320))
    save_frames = g.add("SaveImage", (1580, 420), [prefix + "_frames"], size=(400, 300))
    g.link(samp, 1, save_video, "video")
    g.link(samp, 0, save_frames, "images")


def infinity_tiny() -> dict:
    """The tiny Infinity fixture (saved folder): CFG 3 + Prefix Guidance, default size (256x256)."""
    g = Graph()
    samp = text_chain(g, [TINY_INFINITY, "none", "none", "fp32", *AUTO_LOADER], "a red cat on the beach",
                      ("VPGCFG", [3.0]), [1.5, 0.5, "full", "persistent", "all"], "VPGTextImageSampler",
                      [0, "fixed", "default", 2, 0.5, 0, 900, 0.97])
    _image_outputs(g, samp, "vpg_infinity_tiny")
    return g.to_json()


def infinity_tiny_fastvar() -> dict:
    """The tiny Infinity fixture with CFG 3 + Prefix Guidance + VPG Accelerate (FastVAR) at 512x512. The
    released FastVAR preset prunes blocks 3-27 of the 32-block 2B; the fixture has 2 blocks, so ``config``
    prunes both (on a released model, clear ``config`` to use the preset)."""
    g = Graph()
    samp = text_chain(g, [TINY_INFINITY, "none", "none", "fp32", *AUTO_LOADER], "a red cat on the beach",
                      ("VPGCFG", [3.0]), [1.5, 0.5, "full", "persistent", "all"], "VPGTextImageSampler",
                      [0, "fixed", "512x512", 1, 0.5, 0, 900, 0.97], accelerate=["fastvar", FASTVAR_TINY])
    _image_outputs(g, samp, "vpg_infinity_tiny_fastvar", x=1960)
    return g.to_json()


def infinity_2b() -> dict:
    """The released Infinity-2B at 1024x1024 with its official settings (cfg 3, tau 0.5) and VPG."""
    models = [
        {"name": "infinity_2b_reg.pth", "url": HF_INFINITY + "infinity_2b_reg.pth", "directory": "vpg"},
        {"name": "infinity_vae_d32reg.pth", "url": HF_INFINITY + "infinity_vae_d32reg.pth", "directory": "vpg"},
    ]
    g = Graph()
    samp = text_chain(g, ["infinity_2b_reg.pth", "infinity_vae_d32reg.pth", T5_FOLDER, "bf16", *AUTO_LOADER],
                      "a wax seal embossed with the letters VPG, photo", ("VPGCFG", [3.0]),
                      [1.5, 0.5, "full", "persistent", "all"], "VPGTextImageSampler",
                      [0, "fixed", "1024x1024", 1, 0.5, 0, 900, 0.97], loader_models=models)
    _image_outputs(g, samp, "vpg_infinity_2b")
    return g.to_json()


def infinitystar_tiny() -> dict:
    """The tiny InfinityStar fixture (saved folder): APG + Prefix Guidance (semantic scales, p 0.1), 17 frames."""
    g = Graph()
    samp = text_chain(g, [TINY_INFINITY_STAR, "none", "none", "fp32", *AUTO_LOADER], "a red fox running on the beach",
                      ("VPGAPG", [34.0, 0.05]), [1.5, 0.1, "full", "persistent", "semantic"], "VPGVideoSampler",
                      [0, "fixed", 17, "default", 1, 1.0, 0.4])
    _video_outputs(g, samp, "vpg_infinitystar_tiny")
    return g.to_json()


def infinitystar_720p() -> dict:
    """The released InfinityStar-8B 720p: 81 frames (5 s at 16 fps), 720x1280, APG 34 / 0.05, VPG on the
    semantic scales with p 0.1. The transformer is a shard folder (no single-file download)."""
    models = [{"name": "infinitystar_videovae.pth", "url": HF_INFINITY_STAR + "infinitystar_videovae.pth",
               "directory": "vpg"}]
    g = Graph()
    samp = text_chain(g, ["infinitystar_8b_720p_weights", "infinitystar_videovae.pth", T5_FOLDER, "bf16",
                          *AUTO_LOADER],
                      "a red fox running through fresh snow, close-up", ("VPGAPG", [34.0, 0.05]),
                      [1.5, 0.1, "full", "persistent", "semantic"], "VPGVideoSampler",
                      [0, "fixed", 81, "720x1280", 1, 1.0, 0.4], loader_models=models)
    _video_outputs(g, samp, "vpg_infinitystar_720p")
    return g.to_json()


def _star_video_vae() -> list[dict]:
    return [{"name": "infinitystar_videovae.pth", "url": HF_INFINITY_STAR + "infinitystar_videovae.pth",
             "directory": "vpg"}]


def infinitystar_480p_i2v() -> dict:
    """The released InfinityStar-8B 480p checkpoint, image-to-video: Load Image -> start_image, 81 frames (5 s) at
    480x848, the 480p script's settings (APG 34 / 0.05, tau 1.0 / 0.4) + VPG (semantic, p 0.1). The transformer is
    a shard folder (no single-file download)."""
    g = Graph()
    samp = text_chain(g, ["infinitystar_8b_480p_weights", "infinitystar_videovae.pth", T5_FOLDER, "bf16",
                          *AUTO_LOADER],
                      "the scene comes to life: a gentle breeze, soft light, the camera slowly pushes in",
                      ("VPGAPG", [34.0, 0.05]), [1.5, 0.1, "full", "persistent", "semantic"], "VPGVideoSampler",
                      [0, "fixed", 81, "480x848", 1, 1.0, 0.4], loader_models=_star_video_vae())
    image = g.add("LoadImage", (840, 300), [START_IMAGE, UPLOAD], size=(320, 340))
    g.link(image, 0, samp, "start_image")
    _video_outputs(g, samp, "vpg_infinitystar_480p_i2v")
    return g.to_json()


def infinitystar_480p_continuation() -> dict:
    """The released 480p checkpoint continuing a video (the script's V2V): Load Video -> video, its first 5 s kept
    and 5 s more made, 161 frames (10 s) at 480x848, the 480p script's settings + VPG."""
    g = Graph()
    samp = text_chain(g, ["infinitystar_8b_480p_weights", "infinitystar_videovae.pth", T5_FOLDER, "bf16",
                          *AUTO_LOADER],
                      "the scene goes on: the subject keeps moving, the camera follows smoothly",
                      ("VPGAPG", [34.0, 0.05]), [1.5, 0.1, "full", "persistent", "semantic"], "VPGVideoSampler",
                      [0, "fixed", 161, "480x848", 1, 1.0, 0.4], loader_models=_star_video_vae())
    video = g.add("LoadVideo", (840, 300), [REFERENCE_VIDEO, UPLOAD], size=(320, 420))
    g.link(video, 0, samp, "video")
    _video_outputs(g, samp, "vpg_infinitystar_480p_continuation")
    return g.to_json()


def infinitystar_interact() -> dict:
    """The released InfinityStar-Interact checkpoint: Load Video (the reference) -> VPG Interact Sampler, one 5 s clip
    per line of prompts, the Interact script's settings (CFG 3, tau 0.5) + VPG (semantic, p 0.1)."""
    g = Graph()
    loader = g.add("VPGModelLoader", (20, 40), ["InfinityStarInteract_24K_iters", "infinitystar_videovae.pth",
                                                T5_FOLDER, "bf16", *AUTO_LOADER], size=(380, 210),
                   models=_star_video_vae())
    cfg_node = g.add("VPGCFG", (440, 40), [3.0], size=(320, 60))
    prefix = g.add("VPGPrefixGuidance", (800, 40), [1.5, 0.1, "full", "persistent", "semantic"], size=(320, 180))
    video = g.add("LoadVideo", (800, 300), [REFERENCE_VIDEO, UPLOAD], size=(320, 420))
    samp = g.add("VPGInteractSampler", (1160, 40), [INTERACT_PROMPTS, "", 0, "fixed", 1, 0.5], size=(380, 380))
    g.link(loader, 0, cfg_node, "model")
    g.link(cfg_node, 0, prefix, "model")
    g.link(prefix, 0, samp, "model")
    g.link(video, 0, samp, "video")
    _video_outputs(g, samp, "vpg_infinitystar_interact")
    return g.to_json()


WORKFLOWS = {
    "vpg_demo_cfg_prefix.json": demo_cfg_prefix,
    "vpg_demo_side_by_side.json": demo_side_by_side,
    "vpg_demo_guidance_stack.json": demo_guidance_stack,
    "vpg_var_d16.json": var_d16,
    "vpg_infinity_tiny.json": infinity_tiny,
    "vpg_infinity_tiny_fastvar.json": infinity_tiny_fastvar,
    "vpg_infinity_2b.json": infinity_2b,
    "vpg_infinitystar_tiny.json": infinitystar_tiny,
    "vpg_infinitystar_720p.json": infinitystar_720p,
    "vpg_infinitystar_480p_i2v.json": infinitystar_480p_i2v,
    "vpg_infinitystar_480p_continuation.json": infinitystar_480p_continuation,
    "vpg_infinitystar_interact.json": infinitystar_interact,
}


def main() -> None:
    out = REPO / "workflows"
    out.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (out / name).write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")
        print(out / name)


if __name__ == "__main__":
    main()
