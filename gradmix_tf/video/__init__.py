"""Video support: the clip pipeline (ffmpeg decoding, tf.data clip sampling) and video trunks."""
