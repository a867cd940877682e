"""Entropy coding: Laplace tables, causal contexts, the integer ARM and the lockstep latent coder.

Modules are imported directly (``from ralhe_me.entropy.latent_coder import encode_latents``); this
package file imports nothing so that ``ralhe_me.nn.arm`` can import ``laplace`` without a cycle."""
