"""Qt widgets of SD-FSMIS desktop. Nothing here imports torch, diffusers or SimpleITK: it calls core."""
